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
from loramem.core.base_model import load_causal_lm, training_precision, weights_precision
from loramem.core.options import TrainingOptions
from loramem.core.settings import Settings
from loramem.trainer.batching import (
    IGNORE_INDEX,
    Row,
    TrainingExample,
    collate,
    length_grouped_batches,
    members,
    micro_batches,
    padded_width,
    shared_rows,
    widest_within,
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
    padded = sum(len(b) * padded_width(max(len(examples[i].input_ids) for i in b)) for b in batches)
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
    assert sorted(i for run in runs for i in members(run)) == list(range(6))
    assert [Row((5,))] in runs  # longer than the budget: alone
    for run in runs:
        width = padded_width(max(row.width(examples) for row in run))
        assert len(run) == 1 or len(run) * width <= 100


def test_micro_batches_come_in_a_few_widths_with_little_more_padding() -> None:
    widths = [padded_width(width) for width in range(1, 1025)]
    assert all(p >= w for w, p in zip(range(1, 1025), widths, strict=True))
    assert all(p <= 1.125 * w for w, p in zip(range(64, 1025), widths[63:], strict=True))
    # 8 widths an octave: 8, 16, ..., 64, then 72, 80, ..., 128, then 144, 160, ..., 1024.
    assert len(set(widths)) == 5 * 8 and max(widths) == 1024
    for tokens in range(8, 1025):
        fits = [w for w in range(1, 1025) if padded_width(w) <= tokens]
        assert widest_within(tokens) == max(fits)
    examples = _examples([97, 60, 33])
    batch = collate(examples, pad_id=0, device=torch.device("cpu"))
    assert batch["input_ids"].shape == (3, 104)
    assert batch["owners"][:, 97:].eq(-1).all() and batch["labels"][:, 97:].eq(IGNORE_INDEX).all()


def _sharing_a_passage(
    passages: int, questions: int, seed: int = 0, passage_tokens: int = 150
) -> list[TrainingExample]:
    """Per passage, questions asked with it in the prompt (as augment "mix" writes them)."""
    rng = random.Random(seed)
    examples = []
    for _ in range(passages):
        passage = [rng.randrange(10, 1000) for _ in range(passage_tokens)]
        for _ in range(questions):
            question = [rng.randrange(10, 1000) for _ in range(rng.randint(8, 20))]
            answer = [rng.randrange(10, 1000) for _ in range(rng.randint(2, 6))]
            examples.append(
                TrainingExample(
                    passage + question + answer,
                    [IGNORE_INDEX] * (passage_tokens + len(question)) + answer,
                )
            )
    return examples


def test_examples_that_share_a_passage_share_a_row() -> None:
    examples = _sharing_a_passage(passages=2, questions=3)
    examples.append(TrainingExample(list(range(40, 80)), list(range(40, 80))))  # a text's chunk
    rows = shared_rows(range(7), examples, max_tokens=1 << 20)
    assert sorted(rows, key=lambda row: row.members) == [
        Row((0, 1, 2), 150),
        Row((3, 4, 5), 150),
        Row((6,)),
    ]
    # A row no wider than the budget: the passage's third question starts a row of its own.
    budget = padded_width(Row((0, 1), 150).width(examples))
    assert padded_width(Row((0, 1, 2), 150).width(examples)) > budget
    assert shared_rows([0, 1, 2], examples, budget) == [Row((0, 1), 150), Row((2,))]
    # The shared prefix stops where an example's first label is predicted.
    same = TrainingExample([5] * 60, [IGNORE_INDEX] * 50 + [5] * 10)
    assert shared_rows([0, 1], [same, same], 1 << 20) == [Row((0, 1), 49)]


def test_questions_that_share_only_an_opening_share_a_row_beside_the_passages() -> None:
    opening = list(range(1, 9))  # the chat template's first tokens, before every question
    rng = random.Random(3)
    questions = []
    for _ in range(4):
        question = [rng.randrange(10, 1000) for _ in range(rng.randint(10, 16))]
        answer = [rng.randrange(10, 1000) for _ in range(3)]
        ids = opening + question + answer
        questions.append(TrainingExample(ids, [IGNORE_INDEX] * (len(ids) - 3) + answer))
    examples = _sharing_a_passage(passages=2, questions=2, seed=4) + questions
    examples += [TrainingExample(opening + [7] * 40, opening + [7] * 40)]  # labelled throughout
    rows = shared_rows(range(len(examples)), examples, max_tokens=1 << 20)
    # The passages' questions keep a passage a row; the other questions share their opening;
    # an example labelled from its start has nothing to share.
    assert sorted(rows, key=lambda row: row.members) == [
        Row((0, 1), 150),
        Row((2, 3), 150),
        Row((4, 5, 6, 7), 8),
        Row((8,)),
    ]
    # A passage's question alone in its batch has nothing in common with the others here.
    assert sorted(shared_rows([0, 4, 5], examples, 1 << 20), key=lambda row: row.members) == [
        Row((0,)),
        Row((4, 5), 8),
    ]


def test_a_pass_computes_each_passage_about_once_per_batch() -> None:
    # 12 passages of 150 tokens with 6 questions each, beside 60 short QA pairs.
    examples = _sharing_a_passage(passages=12, questions=6) + _examples([30] * 60, seed=2)
    batches = length_grouped_batches(examples, batch_size=8, seed=0)
    one_pass = [next(batches) for _ in range(-(-len(examples) // 8))]
    assert sorted(i for batch in one_pass for i in batch) == list(range(len(examples)))
    apart = sum(len(example.input_ids) for example in examples)
    computed = sum(
        row.width(examples) for batch in one_pass for row in shared_rows(batch, examples, 1 << 20)
    )
    # Apart: 72 x ~169 + 60 x 30 = 14,000 tokens; with every passage once per batch that holds
    # its questions, about 6,000.
    assert computed < 0.5 * apart


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
        expected = model(input_ids=batch["input_ids"], labels=batch["labels"])
        result = labelled_loss(model, batch)
    labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert result.labelled == labelled
    assert torch.allclose(result.total / labelled, expected.loss, atol=1e-5)
    targets = batch["labels"][:, 1:]
    wrong = (expected.logits[:, :-1].argmax(-1) != targets) & (targets != IGNORE_INDEX)
    assert result.exact == (~wrong.any(-1)).tolist()


def test_rows_that_share_a_prefix_score_and_learn_as_the_examples_apart(tiny) -> None:  # type: ignore[no-untyped-def]
    from loramem.trainer.lora_trainer import _Steps

    model, tokenizer = tiny
    examples = _sharing_a_passage(passages=2, questions=3, seed=5, passage_tokens=40)
    examples += _examples([9, 17], answer=4, seed=6)
    rows = shared_rows(range(len(examples)), examples, 1 << 20)
    assert sorted(len(row.members) for row in rows) == [1, 1, 3, 3]
    order = members(rows)
    apart = collate([examples[i] for i in order], tokenizer.pad_token_id, model.device)
    shared = collate(examples, tokenizer.pad_token_id, model.device, rows)
    assert shared["input_ids"].numel() < apart["input_ids"].numel()
    with torch.no_grad():
        alone, together = labelled_loss(model, apart), labelled_loss(model, shared)
    assert together.labelled == alone.labelled
    assert torch.allclose(together.total, alone.total, rtol=1e-4)
    assert together.exact == alone.exact
    # The same gradients, from a step over the batch as rows and one over each example alone.
    grads, steps = [], []
    for budget in (1 << 20, 1):
        model.zero_grad(set_to_none=True)
        steps.append(_Steps(model, examples, tokenizer.pad_token_id, ComputePlan(None, budget)))
        steps[-1].run(list(range(len(examples))), backward=True)
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    model.zero_grad(set_to_none=True)
    shared_step, apart_step = steps
    assert shared_step.shared_share > 0  # the step computed each passage once
    assert apart_step.shared_share == 0 and apart_step.real == apart_step.apart  # one a row
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


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
    with pytest.raises(MemoryBoundError, match="memory bound"):
        plan_compute(config, 100, 99 * both, None)
    # bf16 keeps less a kept layer, so the same bound holds more tokens...
    roomy = plan_compute(config, 100, 1000 * unsplit, torch.bfloat16)
    assert roomy.precision == "bf16" and roomy.micro_batch_tokens > 1000
    assert roomy.checkpointed_layers == 0
    # ...less the weights' bf16 copies; where what is left is too little, fp32 without copies.
    copies = 10 * both
    assert plan_compute(config, 100, 100 * both, torch.bfloat16, copies) == ComputePlan(
        None, 100, 2
    )
    fits = plan_compute(config, 100, 100 * both + copies, torch.bfloat16, copies)
    assert fits == ComputePlan(torch.bfloat16, 100, 2)


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


def test_casting_once_gives_autocasts_gradients_and_puts_everything_back(tiny) -> None:  # type: ignore[no-untyped-def]
    from peft.tuners.lora import LoraLayer

    from loramem.trainer.lora_trainer import _Steps, cast_once

    model, tokenizer = tiny
    examples = _examples([12, 30, 25], answer=5, seed=5)
    plan = ComputePlan(torch.bfloat16, 1 << 20)
    embeddings = model.get_input_embeddings().weight
    # The head shares the embeddings' weight (tied): it stays as it is.
    frozen = {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and not module.weight.requires_grad
        and module.weight is not embeddings
    }
    adapted = [m for m in model.modules() if isinstance(m, LoraLayer)]
    grads = []
    for once in (False, True):
        model.zero_grad(set_to_none=True)
        inputs: set[torch.dtype] = set()
        with cast_once(model, plan.autocast if once else None):
            dtypes = {model.get_submodule(name).weight.dtype for name in frozen}
            assert dtypes == ({torch.bfloat16} if once else {torch.float32})
            seen = [
                m.register_forward_hook(lambda _m, args, _out, seen=inputs: seen.add(args[0].dtype))
                for m in adapted
            ]
            _Steps(model, examples, tokenizer.pad_token_id, plan).run([0, 1, 2], backward=True)
            for hook in seen:
                hook.remove()
        # Cast once, every adapted layer gets its input in bf16; otherwise those after a norm
        # get its fp32.
        assert (inputs == {torch.bfloat16}) if once else (torch.float32 in inputs)
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    model.zero_grad(set_to_none=True)
    # Autocast rounds each weight the same way at every use: the same gradients.
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)
    assert all(model.get_submodule(name).weight is weight for name, weight in frozen.items())
    assert not any(m._forward_pre_hooks for m in adapted)
    assert all(m.cast_input_dtype_enabled for m in adapted)
    assert model.get_input_embeddings().weight is embeddings
    assert embeddings.dtype == torch.float32


def test_precision_follows_the_setting_and_the_hardware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for has_bf16 in (True, False):
        monkeypatch.setattr(base_model, "bf16_supported", lambda device, has=has_bf16: has)
        monkeypatch.setattr(base_model, "bf16_faster", lambda device, has=has_bf16: has)
        assert training_precision(Settings(data_dir=tmp_path)) == ("bf16" if has_bf16 else "fp32")
        assert training_precision(Settings(data_dir=tmp_path, train_precision="fp32")) == "fp32"
        assert training_precision(Settings(data_dir=tmp_path, train_precision="bf16")) == "bf16"
        assert weights_precision(Settings(data_dir=tmp_path)) == "fp32"
        bf16_weights = Settings(data_dir=tmp_path, weights_precision="bf16")
        assert weights_precision(bf16_weights) == ("bf16" if has_bf16 else "fp32")


def test_auto_precision_is_bf16_only_where_a_bf16_matmul_measures_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Measured here, on whatever CPU runs the tests: two positive times.
    assert all(seconds > 0 for seconds in base_model._matmul_seconds(rounds=1))
    monkeypatch.setattr(base_model, "bf16_supported", lambda device: True)
    try:
        # (fp32's time, bf16's): bf16 must be clearly faster to pay for its casts.
        for times, expected in (((1.0, 0.5), "bf16"), ((1.0, 0.9), "fp32"), ((1.0, 1.6), "fp32")):
            monkeypatch.setattr(base_model, "_matmul_seconds", lambda t=times: t)
            base_model.bf16_faster.cache_clear()
            assert training_precision(Settings(data_dir=tmp_path)) == expected
            assert training_precision(Settings(data_dir=tmp_path, train_precision="bf16")) == "bf16"
        monkeypatch.setattr(base_model, "bf16_supported", lambda device: False)
        base_model.bf16_faster.cache_clear()
        assert training_precision(Settings(data_dir=tmp_path)) == "fp32"
    finally:
        # The measurement is cached for the process: the other tests get this machine's own.
        base_model.bf16_faster.cache_clear()


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
