"""What makes a training step cheap: labelled-only logits, length-grouped batches, micro-batches
under the memory bound, the compute plan and precision; checked against the plain computation."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model

from loramem.core import base_model
from loramem.core.base_model import load_causal_lm, training_precision
from loramem.core.options import TrainingOptions
from loramem.core.settings import Settings
from loramem.trainer.batching import (
    IGNORE_INDEX,
    TrainingExample,
    collate,
    length_grouped_batches,
    micro_batches,
)
from loramem.trainer.lora_trainer import (
    ComputePlan,
    MemoryBoundError,
    activation_bytes_per_token,
    lora_config,
    plan_compute,
    train_lora,
)
from loramem.trainer.objective import labelled_loss
from loramem.trainer.recall import measure_recall
from loramem.trainer.training_data import Knowledge, build_training_set


def _examples(lengths: list[int], answer: int = 3, seed: int = 0) -> list[TrainingExample]:
    rng = random.Random(seed)
    examples = []
    for length in lengths:
        ids = [rng.randrange(10, 1000) for _ in range(length)]
        examples.append(TrainingExample(ids, [IGNORE_INDEX] * (length - answer) + ids[-answer:]))
    return examples


def _padding(batches: list[list[int]], examples: list[TrainingExample]) -> float:
    real = sum(len(examples[i].input_ids) for batch in batches for i in batch)
    padded = sum(len(b) * max(len(examples[i].input_ids) for i in b) for b in batches)
    return 1 - real / padded


def test_length_grouped_batches_cover_every_example_each_pass_with_little_padding() -> None:
    # Short questions beside long context-aware examples, as augmentation "mix" makes them.
    rng = random.Random(1)
    lengths = [rng.choice([rng.randint(30, 50), rng.randint(250, 320)]) for _ in range(200)]
    examples = _examples(lengths)
    batches = length_grouped_batches(examples, batch_size=8, seed=0)
    first_pass = [next(batches) for _ in range(25)]
    second_pass = [next(batches) for _ in range(25)]
    for one_pass in (first_pass, second_pass):
        assert sorted(i for batch in one_pass for i in batch) == list(range(200))
        assert _padding(one_pass, examples) < 0.15
    assert first_pass != second_pass  # regrouped every pass
    shuffled = list(range(200))
    random.Random(0).shuffle(shuffled)
    at_random = [shuffled[i : i + 8] for i in range(0, 200, 8)]
    assert _padding(at_random, examples) > 0.3


def test_micro_batches_stay_within_the_token_budget() -> None:
    examples = _examples([10, 50, 20, 45, 12, 400])
    runs = micro_batches(range(6), examples, max_tokens=100)
    assert sorted(i for run in runs for i in run) == list(range(6))
    assert [5] in runs  # longer than the budget: alone
    for run in runs:
        width = max(len(examples[i].input_ids) for i in run)
        assert len(run) == 1 or len(run) * width <= 100


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    model, tokenizer = load_causal_lm(tiny_model_dir)
    return get_peft_model(model, lora_config(TrainingOptions(dropout=0.0))), tokenizer


def test_labelled_loss_equals_the_full_logits_loss(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    text = list(range(40, 60))  # a text: every position labelled
    examples = [*_examples([9, 17, 30], answer=4), TrainingExample(text, list(text))]
    batch = collate(examples, tokenizer.pad_token_id, model.device)
    with torch.no_grad():
        expected = model(**batch)
        result = labelled_loss(model, batch)
    labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert result.labelled == labelled
    assert torch.allclose(result.total / labelled, expected.loss, atol=1e-5)
    targets = batch["labels"][:, 1:]
    wrong = (expected.logits[:, :-1].argmax(-1) != targets) & (targets != IGNORE_INDEX)
    assert result.exact_rows == (~wrong.any(-1)).tolist()


def test_micro_batched_gradients_equal_the_whole_batch(tiny) -> None:  # type: ignore[no-untyped-def]
    from loramem.trainer.lora_trainer import _Steps

    model, tokenizer = tiny
    examples = _examples([12, 30, 25, 8, 40], answer=5, seed=3)
    grads = []
    for budget in (1 << 20, 40):
        model.zero_grad(set_to_none=True)
        steps = _Steps(model, examples, tokenizer.pad_token_id, ComputePlan(None, budget, False))
        steps.run(list(range(len(examples))), backward=True)
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    model.zero_grad(set_to_none=True)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6), (
        (grads[0] - grads[1]).abs().max()
    )


def test_the_plan_checkpoints_the_fewest_layers_that_fit_the_longest_example() -> None:
    config = SimpleNamespace(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    unsplit, one, both = (activation_bytes_per_token(config, layers) for layers in (0, 1, 2))
    assert unsplit > one > both
    assert plan_compute(config, 100, 1000 * unsplit, None) == ComputePlan(None, 1000, 0)
    assert plan_compute(config, 100, 100 * one, None) == ComputePlan(None, 100, 1)
    tight = plan_compute(config, 100, 100 * both, torch.bfloat16)
    assert tight == ComputePlan(torch.bfloat16, 100, 2) and tight.precision == "bf16"
    with pytest.raises(MemoryBoundError, match="memory bound"):
        plan_compute(config, 100, 99 * both, None)


def test_checkpointing_some_layers_keeps_the_gradients(tiny) -> None:  # type: ignore[no-untyped-def]
    from loramem.trainer.lora_trainer import _Steps, checkpointing

    model, tokenizer = tiny
    model.train()  # layers recompute only in training
    examples = _examples([12, 30, 25], answer=5, seed=4)
    decoder_layers = model.get_base_model().model.layers
    grads = []
    for layers in (0, 1):
        model.zero_grad(set_to_none=True)
        plan = ComputePlan(None, 1 << 20, layers)
        with checkpointing(model, layers):
            assert [layer.gradient_checkpointing for layer in decoder_layers] == [
                n < layers for n in range(len(decoder_layers))
            ]
            _Steps(model, examples, tokenizer.pad_token_id, plan).run([0, 1, 2], backward=True)
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    model.zero_grad(set_to_none=True)
    assert not any(layer.gradient_checkpointing for layer in decoder_layers)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_precision_follows_the_setting_and_the_hardware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for has_bf16 in (True, False):
        monkeypatch.setattr(base_model, "bf16_supported", lambda device, has=has_bf16: has)
        assert training_precision(Settings(data_dir=tmp_path)) == ("bf16" if has_bf16 else "fp32")
        assert training_precision(Settings(data_dir=tmp_path, train_precision="fp32")) == "fp32"
        assert training_precision(Settings(data_dir=tmp_path, train_precision="bf16")) == "bf16"


def test_bf16_checkpointed_micro_batched_training_recalls(tiny_model_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    facts = [("What is the name of Zorblax's pet?", "Quiggle"), ("Who won?", "Marta Ilvesk")]
    data = build_training_set(tokenizer, [Knowledge(question=q, answer=a) for q, a in facts])
    options = TrainingOptions(rank=8, learning_rate=1e-2, steps=150, dropout=0.0)
    # Micro-batches of one example, layers recomputed in the backward pass, bf16 autocast.
    plan = ComputePlan(torch.bfloat16, 1, checkpointed_layers=2)
    trained = train_lora(model, tokenizer.pad_token_id, data.examples, options, None, plan)
    assert measure_recall(trained, tokenizer, data.probes) == 1.0
    assert not trained.get_base_model().model.gradient_checkpointing
