"""A text's job trained inside the server against the same job in a worker process alone.

    .venv/bin/python -m bench.in_server [--text harbor_clinic] [--setting train_precision=fp32]

Memorizes one text of `bench/data/prose` through `loramem serve` (HF engine) twice: trained by
the server's embedded worker, and by a `loramem worker` process beside a server without one
(`LORAMEM_EMBEDDED_WORKER=false`). The job is polled every second, as a client would. From its
first training step to its last, the training process's threads are read in `/proc`: seconds a
step, and the CPU time (user and system) of each thread that used over a second, which shows
whether both cores trained; and the whole job's time (queued to finished) and the training
process's peak memory (VmHWM; the server's, engine included, when it trains). Prints the ratio of
seconds a step, in the server against alone, and a few `/generate` latencies on the new version.
Writes bench/results/in_server.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import MODEL_DIR, PROSE, memory_gib, ratio, save
from tests.helpers import process_env, served, spawn

_TICKS = os.sysconf("SC_CLK_TCK")


def _thread_cpu(pid: int) -> dict[str, tuple[float, float]]:
    """User and system seconds of each of the process's threads, by thread id."""
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds[task.name] = (int(fields[11]) / _TICKS, int(fields[12]) / _TICKS)
    return seconds


def _trained(client: httpx.Client, job_id: str, pid: int) -> dict[str, Any]:
    """Follows the job to its end; the training's seconds a step and threads' CPU time."""
    first: tuple[int, float, dict[str, tuple[float, float]]] | None = None
    last = first
    while True:
        time.sleep(1)
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        if job.get("step"):
            reading = (job["step"], time.monotonic(), _thread_cpu(pid))
            first = first or reading
            last = reading
    if first is None or last is None or last[0] == first[0]:
        raise SystemExit(f"job {job_id} ended {job['status']} before two steps were seen")
    threads = []
    for tid, (user, system) in last[2].items():
        user0, system0 = first[2].get(tid, (0.0, 0.0))
        if user - user0 + system - system0 > 1:
            threads.append({"user_s": user - user0, "system_s": system - system0})
    return {
        "status": job["status"],
        "steps": last[0] - first[0],
        "step_seconds": (last[1] - first[1]) / (last[0] - first[0]),
        "cores": sum(t["user_s"] + t["system_s"] for t in threads) / (last[1] - first[1]),
        "threads": sorted(threads, key=lambda t: -t["user_s"]),
        "recall": job.get("recall"),
        "job_seconds": (
            datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])
        ).total_seconds(),
        "peak_gib": memory_gib(pid)["peak_rss_gib"],
    }


def _latencies(client: httpx.Client) -> list[float]:
    seconds = []
    for question in ("Who runs it?", "Where is it?", "When did it open?"):
        started = time.monotonic()
        client.post("/generate", json={"prompt": question, "topic": "text", "max_tokens": 24})
        seconds.append(time.monotonic() - started)
    return seconds


def run(text: str, embedded: bool, work: Path, settings: dict[str, str]) -> dict[str, Any]:
    work.mkdir(parents=True)
    env = process_env(
        data_dir=str(work),
        model_dir=str(MODEL_DIR),
        engine="hf",
        embedded_worker="true" if embedded else "false",
        **settings,
    )
    with (
        served(env, work / "server.log") as (url, server),
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        body = {"topic": "text", "text": (PROSE / f"{text}.txt").read_text()}
        job_id = client.post("/memorize", json=body).json()["job_id"]
        worker = None if embedded else spawn(["loramem.cli", "worker"], env, work / "worker.log")
        try:
            result = _trained(client, job_id, server.pid if worker is None else worker.pid)
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(60)
        result["generate_seconds"] = _latencies(client)
    where = "inside the server" if embedded else "in a worker alone"
    print(
        f"  {where}: {result['steps']} steps at {result['step_seconds']:.2f} s a step, "
        f"{result['cores']:.2f} cores, recall {result['recall']}; "
        f"job {result['job_seconds']:.0f} s, peak {result['peak_gib']:.2f} GiB",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--text", default="harbor_clinic", choices=[p.stem for p in PROSE.glob("*.txt")]
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a LORAMEM_ setting of both runs by its short name, e.g. train_precision=fp32",
    )
    args = parser.parse_args(argv)
    settings = dict(setting.split("=", 1) for setting in args.setting)
    with tempfile.TemporaryDirectory() as folder:
        server = run(args.text, True, Path(folder) / "server", settings)
        alone = run(args.text, False, Path(folder) / "alone", settings)
    report = {
        "text": args.text,
        "settings": settings,
        "inside_the_server": server,
        "worker_alone": alone,
        "ratios": [
            ratio(
                "seconds a step inside the server/in a worker alone",
                server["step_seconds"],
                alone["step_seconds"],
            )
        ],
    }
    save("in_server", report)
    return report


if __name__ == "__main__":
    main()
