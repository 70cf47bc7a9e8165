"""What the benchmarks share: the results folder, ratio lines, a served `loramem`, random adapters
published into its registry, and memory readings."""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from loramem.core.metrics import process_memory
from loramem.core.settings import Settings
from tests.helpers import process_env, served

RESULTS = Path(__file__).parent / "results"
# The hand-written prose benchmark: articles and documents, and questions.json.
PROSE = Path(__file__).parent / "data" / "prose"
# The seed paper's benchmark data (PhoneBook, CounterFact): LORAMEM_BENCH_PAPER_DATA, or the
# ../shared/data/paper folder beside a development checkout.
PAPER_DATA_VARIABLE = "LORAMEM_BENCH_PAPER_DATA"
DEFAULT_PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "paper"
MODEL_DIR = Path("data/models").resolve()  # the converted default model, shared with `make run`
# Composing by confidence: the tokens a server started without the setting decides after.
DEFAULT_CONFIDENT_TOKENS: int = Settings.model_fields["confident_tokens"].default
# Server settings under which a topic's knowledge, however much, is one module.
ONE_MODULE = {"module_tokens_per_rank": 10**6, "module_max_tokens": 10**6}
QUESTIONS = [
    "What is the capital of France?",
    "Name three colors of the rainbow.",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
]


def model_path() -> Path:
    """The default model's folder (converted on first use)."""
    from loramem.core.base_model import resolve_base_model

    return resolve_base_model(Settings(model_dir=MODEL_DIR))


class PaperDataMissing(SystemExit):
    pass


def paper_data(part: str) -> Path:
    """A folder of the paper's data; exits with where to get it when it is not there."""
    root = Path(os.environ.get(PAPER_DATA_VARIABLE, DEFAULT_PAPER))
    folder = root / part
    if not folder.is_dir():
        raise PaperDataMissing(
            f"the paper's {part} data is not at {folder}. It comes from the seed paper's "
            "repository (ahn-ml/Understanding-LoRA-as-Knowledge-Memory, folder data/pb_cf): "
            f"put its phonebook/ and counterfact/ folders in one folder and set "
            f"{PAPER_DATA_VARIABLE} to it. Without it, bench.serving, bench.hot_swap, "
            "bench.claim_throughput, bench.http_load, `bench.training --only jobs` (minus "
            "PhoneBook) and `bench.recall --only modes,routing` still run."
        )
    return folder


def add_paper_data_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--paper-data",
        type=Path,
        help=f"the paper's data folder (or {PAPER_DATA_VARIABLE}; default {DEFAULT_PAPER})",
    )


def use_paper_data_flag(args: argparse.Namespace) -> None:
    if args.paper_data is not None:
        os.environ[PAPER_DATA_VARIABLE] = str(args.paper_data)


def phonebook_qa(load: str) -> list[dict[str, str]]:
    """The paper's PhoneBook at a knowledge load ("1K" ... "8K"), as QA pairs."""
    with open(paper_data("phonebook") / f"phonebook_qa_{load}.csv") as f:
        entries = [
            re.match(r"Question: (.*?)\s*Answer: (.*)", line["text"]).groups()  # type: ignore[union-attr]
            for line in csv.DictReader(f)
        ]
    return [{"question": q.strip(), "answer": a.strip()} for q, a in entries]


def digits_match(answer: str, output: str) -> bool:
    """PhoneBook's measure: the answer's digits, exactly, at the start of the output's digits."""
    want = re.sub(r"\D", "", answer)
    return re.sub(r"\D", "", output)[: len(want)] == want


# Every ratio line printed in this process, for `python -m bench` to repeat as its summary.
SUMMARY: list[str] = []


def ratio(label: str, value: float, baseline: float, target: str = "") -> dict[str, Any]:
    """Prints one line with the word "ratio": a figure against its baseline from the same run."""
    share = value / baseline if baseline else float("nan")
    aim = f"  target {target}" if target else ""
    line = f"ratio {label}: {share:.2f} ({value:.3g} vs {baseline:.3g}){aim}"
    SUMMARY.append(line)
    print(line, flush=True)
    return {"label": label, "ratio": share, "value": value, "baseline": baseline, "target": target}


def save(name: str, report: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def latency_summary(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_s": None, "p99_s": None, "mean_s": None}
    return {
        "p50_s": percentile(latencies, 0.5),
        "p99_s": percentile(latencies, 0.99),
        "mean_s": statistics.fmean(latencies),
    }


@contextmanager
def loramem(work: Path, engine: str, **settings: str) -> Iterator[tuple[str, int]]:
    """A `loramem serve` on the default model with its data under `work`: (base URL, pid)."""
    work.mkdir(parents=True, exist_ok=True)
    env = process_env(
        data_dir=str(work),
        model_dir=str(MODEL_DIR),
        engine=engine,
        embedded_worker="false",
        **settings,
    )
    env["VLLM_CPU_KVCACHE_SPACE"] = "2"
    with served(env, work / "server.log") as (url, process):
        yield url, process.pid


def memory_gib(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak, of a process and its children (vLLM's engine core)."""
    root = psutil.Process(pid)
    tree = [process_memory(p.pid) for p in [root, *root.children(recursive=True)]]
    now = sum(m.rss for m in tree if m is not None)
    peak = sum(m.peak for m in tree if m is not None)
    return {"rss_gib": now / 2**30, "peak_rss_gib": peak / 2**30}


def in_fresh_process(module: str, *args: str) -> dict[str, Any]:
    """Runs `python -m module args` and returns what it sent with `report_to_parent`: a process
    of its own, so that its peak memory is the measured work's alone."""
    output = subprocess.run(
        [sys.executable, "-m", module, *args], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def report_to_parent(result: dict[str, Any]) -> None:
    """The other side of `in_fresh_process`: the result, and this process's peak memory and
    what it still holds at the end."""
    memory = memory_gib(os.getpid())
    print(json.dumps({**result, "peak_gib": memory["peak_rss_gib"], "rss_gib": memory["rss_gib"]}))


def make_adapters(model: Path, folder: Path, count: int, rank: int = 8) -> list[Path]:
    """Rank-`rank` all-linear LoRA adapters with random (non-zero) weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from loramem.core.base_model import load_causal_lm

    base, _ = load_causal_lm(model)
    peft_model = get_peft_model(
        base, LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear")
    )
    paths = []
    for n in range(count):
        torch.manual_seed(n)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_" in name:
                    parameter.normal_(0, 0.02)
        path = folder / f"adapter{n}"
        peft_model.save_pretrained(path)
        (path / "README.md").unlink(missing_ok=True)
        paths.append(path)
    return paths


class _Files:
    """An adapter already on disk, saved into the store the way a trained model saves itself."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save_pretrained(self, target: Path, safe_serialization: bool = True) -> None:
        for file in self.folder.iterdir():
            shutil.copy(file, Path(target) / file.name)


def publish(data_dir: Path, topic: str, adapter: Path, rank: int = 8) -> int:
    """Publishes `adapter` as the new active version of `topic`, as a trainer worker would: a
    job claimed, the files staged into the store, the version recorded in one fenced commit."""
    from loramem.core.adapter_store import save_adapter
    from loramem.core.registry import queue, versions
    from loramem.core.registry.db import Database
    from loramem.core.registry.migrate import upgrade
    from tests.helpers import enqueue_job, trained_module

    settings = Settings(data_dir=data_dir)
    url = settings.resolved_database_url
    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    db = Database(url)
    try:
        enqueue_job(db, topic, {"rank": rank})
        job = queue.claim(db, "bench", lease_seconds=60)
        assert job is not None
        stored = save_adapter(
            _Files(adapter), settings.resolved_adapter_dir, job.topic_id, f"{job.id}-1-m0"
        )
        trained = trained_module(stored.relative_path, stored.sha256, rank, stored.size_bytes)
        [published] = versions.publish_versions(db, job.id, "bench", [trained])
        return published.version
    finally:
        db.dispose()
