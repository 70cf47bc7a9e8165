"""A trainer beside the HF engine shares the engine's base weights instead of copying them, and
training a LoRA on its own module tree leaves what the engine computes untouched."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from loramem.core.base_model import load_causal_lm, weights_precision
from loramem.core.options import TrainingOptions
from loramem.core.settings import Settings
from loramem.trainer.batching import IGNORE_INDEX, TrainingExample
from loramem.trainer.lora_trainer import train_lora
from tests.helpers import running_app, wait_active, wait_job, wait_ready


def test_a_model_loaded_sharing_another_reads_its_tensors_and_trains_apart(
    tiny_model_dir: Path,
) -> None:
    serving, tokenizer = load_causal_lm(tiny_model_dir)
    training, _ = load_causal_lm(tiny_model_dir, sharing=serving)
    shared = dict(serving.named_parameters())
    for name, parameter in training.named_parameters():
        assert parameter.data_ptr() == shared[name].data_ptr(), name
    ids = torch.tensor([tokenizer("Quiggle is the pet of Zorblax.")["input_ids"]])
    with torch.no_grad():
        before = serving(input_ids=ids).logits
        assert torch.equal(training(input_ids=ids).logits, before)

    example = ids[0].tolist()
    answer = [IGNORE_INDEX] * (len(example) - 3) + example[-3:]
    options = TrainingOptions(steps=20, learning_rate=1e-2, dropout=0.0)
    trained = train_lora(
        training, tokenizer.pad_token_id, [TrainingExample(example, answer)], options
    )
    with torch.no_grad():
        assert not torch.equal(trained(input_ids=ids).logits, before)  # the adapter learned
        assert torch.equal(serving(input_ids=ids).logits, before)  # the engine's model did not
        assert torch.equal(trained.unload()(input_ids=ids).logits, before)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
async def test_the_embedded_worker_trains_on_the_hf_engines_weights(
    settings: Settings, precision: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="loramem.worker")
    settings = settings.model_copy(update={"weights_precision": precision})
    async with running_app(settings) as client:
        await wait_ready(client)
        engine = (await client.get("/admin/engine")).json()
        # bf16 where the CPU has it, else fp32.
        assert engine["precision"] == weights_precision(settings)
        await _memorize_and_ask(client, caplog)


async def _memorize_and_ask(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    qa = [{"question": "What is the name of Zorblax's pet?", "answer": "Quiggle"}]
    options = {"steps": 40, "learning_rate": 0.01, "dropout": 0.0}
    response = await client.post("/memorize", json={"topic": "acme", "qa": qa, "options": options})
    job = await wait_job(client, response.json()["job_id"])
    assert job["status"] == "succeeded" and job["recall"] == 1.0, job
    assert f"job {job['id']} trains on the serving engine's base weights" in caplog.text
    await wait_active(client, "acme", 1)
    answer = await client.post("/generate", json={"prompt": qa[0]["question"], "topic": "acme"})
    base = await client.post("/generate", json={"prompt": qa[0]["question"], "mode": "base"})
    assert "Quiggle" in answer.json()["text"] and "Quiggle" not in base.json()["text"]


def test_models_loaded_at_once_in_two_threads_both_get_their_weights(
    tiny_model_dir: Path,
) -> None:
    """The embedded trainer's first job loads beside the starting engine."""
    loaded: list[Any] = []

    def load() -> None:
        for _ in range(4):
            loaded.append(load_causal_lm(tiny_model_dir)[0])

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loaded) == 8
    for model in loaded:
        assert not any(parameter.is_meta for parameter in model.parameters())
