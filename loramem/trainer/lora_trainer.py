"""Trains one LoRA knowledge module with PEFT: all linear layers, alpha = r, AdamW, cosine.

What makes a step cheap (see `objective` and `batching`): logits only where a label is, batches
of similar lengths, examples that begin with the same passage computed as one row, micro-batches
cut to the memory bound, activation checkpointing only when an example alone would exceed it,
and bf16 autocast (fp32 master weights) where the hardware has it, the frozen weights and the
adapted layers' inputs cast once rather than at every use.

QA knowledge stops early once it is learned. The step's own predictions show whether every
answer token was the argmax at the example's latest visit; once that holds for all examples,
one pass without dropout, on the weights as they now are, confirms it (that pass is greedy
decoding's recall, teacher-forced). If it does not hold, training goes on and the evidence starts
afresh. Further steps would only spend time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.helpers import disable_input_dtype_casting
from peft.tuners.lora import LoraLayer
from transformers import get_cosine_schedule_with_warmup
from transformers.modeling_layers import GradientCheckpointingLayer

from loramem.core.heap import release_free_heap
from loramem.core.options import TrainingOptions
from loramem.trainer.batching import (
    IGNORE_INDEX,
    TrainingExample,
    collate,
    length_grouped_batches,
    members,
    micro_batches,
    widest_within,
)
from loramem.trainer.dropout import use_byte_mask_dropout
from loramem.trainer.objective import LossTerms, TeacherTargets, labelled_loss, teacher_targets

log = logging.getLogger("loramem.trainer")

# Called after every optimizer step with (step, total_steps, loss); may raise to stop training.
StepCallback = Callable[[int, int, float], None]

# Activation memory of one token in training, in bytes per layer and per unit of
# (hidden_size + intermediate_size), with LoRA on all linear layers: what a layer keeps for its
# backward pass, and what a checkpointed one keeps (its input, its share of the one layer
# recomputed at a time). Measured with LoRA dropout 0.1, which keeps a dropped-out copy of each
# layer's input; without it (the default) a layer keeps less and the bound errs safe. On
# SmolLM2-135M in fp32, one 300-token example took 0.87 GiB above the loaded model (49 bytes),
# and 8 of them as micro-batches of one, 2.26 GiB in all; checkpointing all 30 layers took that
# to 1.64 GiB (about 35 bytes saved per layer; `bench.train_step`). Larger micro-batches cost
# more than their share, checkpointed ones most (glibc's heap fragments): 8 rows of 300
# checkpointed as one micro-batch peaked at 4.05 GiB.
ACTIVATION_BYTES = {False: 44, True: 13}
# What a layer that keeps its activations keeps in bf16 autocast, with the frozen weights and the
# adapted layers' inputs cast once (`cast_once`), against fp32: the tensors saved for the backward
# pass of one 300-token example's forward through SmolLM2-135M's decoder came to 317 MiB against
# 594 MiB in fp32 (414 MiB with autocast alone; `bench.activation_bytes`). A checkpointed layer
# keeps its fp32 input either way. The bf16 copies of the weights come off the bound instead
# (`cast_once_bytes`).
BF16_KEPT_SHARE = 0.55


class MemoryBoundError(ValueError):
    """An example cannot be trained within the memory bound, even alone and checkpointed."""


@dataclass(frozen=True)
class ComputePlan:
    """How each step computes: in which precision, in micro-batches of how many tokens, and how
    many decoder layers recompute their activations in the backward pass instead of keeping them.
    Each checkpointed layer saves memory and costs a second forward of that layer (on two CPU
    cores, all 30 of SmolLM2's layers made a step of one-example micro-batches 1.9x as long)."""

    autocast: torch.dtype | None
    micro_batch_tokens: int
    checkpointed_layers: int = 0

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast == torch.bfloat16 else "fp32"

    def computing(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of this plan's precision on `device`."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)


# fp32, and micro-batches as large as any batch: how a step computed before plans existed.
FULL_PRECISION = ComputePlan(None, 1 << 40)


def activation_bytes_per_token(
    config: Any, checkpointed_layers: int = 0, autocast: torch.dtype | None = None
) -> int:
    width = config.hidden_size + getattr(config, "intermediate_size", 4 * config.hidden_size)
    kept = config.num_hidden_layers - checkpointed_layers
    kept_bytes = ACTIVATION_BYTES[False] * (BF16_KEPT_SHARE if autocast is not None else 1)
    return int(width * (kept * kept_bytes + checkpointed_layers * ACTIVATION_BYTES[True]))


def longest_trainable(config: Any, memory_bytes: int) -> int:
    """The most tokens one example may have to be trained within the bound: alone, with every
    layer checkpointed (in fp32, which a job falls back to where bf16's weight copies leave too
    little of the bound)."""
    return widest_within(
        memory_bytes // activation_bytes_per_token(config, config.num_hidden_layers)
    )


def plan_compute(
    config: Any,
    longest_example: int,
    memory_bytes: int,
    autocast: torch.dtype | None,
    cast_bytes: int = 0,
) -> ComputePlan:
    """The fewest checkpointed layers with which the longest example fits the bound, and the
    largest micro-batch that the bound then allows. In autocast, `cast_bytes` of the bound go to
    the weights' copies; an example too long for what is left is trained in fp32."""
    if autocast is not None:
        with contextlib.suppress(MemoryBoundError):
            return _fitting(config, longest_example, memory_bytes - cast_bytes, autocast)
    return _fitting(config, longest_example, memory_bytes, None)


def _fitting(
    config: Any, longest_example: int, memory_bytes: int, autocast: torch.dtype | None
) -> ComputePlan:
    for checkpointed in range(config.num_hidden_layers + 1):
        tokens = memory_bytes // activation_bytes_per_token(config, checkpointed, autocast)
        if tokens >= longest_example:
            return ComputePlan(autocast, int(tokens), checkpointed)
    raise MemoryBoundError(
        f"an example of {longest_example} tokens is longer than the "
        f"{longest_trainable(config, memory_bytes)} tokens that the training memory bound "
        f"of {memory_bytes / 2**30:.2f} GiB allows"
    )


@contextlib.contextmanager
def checkpointing(model: Any, layers: int) -> Iterator[None]:
    """Activation checkpointing on the first `layers` decoder layers of `model`, for the block."""
    if layers == 0:
        yield
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    decoder_layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in decoder_layers[layers:]:
        layer.gradient_checkpointing = False
    try:
        yield
    finally:
        model.gradient_checkpointing_disable()


@contextlib.contextmanager
def cast_once(model: Any, autocast: torch.dtype | None) -> Iterator[None]:
    """For the block, `model`'s frozen linear weights in the autocast dtype, and each adapted
    layer's input cast to it before the layer uses it.

    Autocast casts a frozen weight again at every use, and keeps each cast from a micro-batch's
    forward to its backward; cast once, the copies take that memory for the whole training and
    no time. An adapted layer's input reaches it in fp32 (norms run in fp32 under autocast):
    autocast would keep a bf16 copy for the frozen weight, LoRA's dropout an fp32 one, and
    autocast a bf16 copy of that for the adapter, all until the backward pass; cast first, the
    layer keeps one bf16 input and its bf16 dropout. The numbers are the same but for the
    rounding of the dropout's scale: autocast rounds the rest the same way. The input embeddings
    (tied to the head on the default model) stay as they are; the layers get their own weights
    back after."""
    if autocast is None:
        yield
        return
    originals = [(module, module.weight) for module in _frozen_linears(model, autocast)]
    for module, weight in originals:
        module.weight = torch.nn.Parameter(weight.detach().to(autocast), requires_grad=False)

    def cast_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0].to(autocast), *args[1:])

    hooks = [
        module.register_forward_pre_hook(cast_input)
        for module in model.modules()
        if isinstance(module, LoraLayer) and isinstance(module, torch.nn.Module)
    ]
    try:
        # PEFT would cast the input back to the adapter's fp32 weights' dtype.
        with disable_input_dtype_casting(model):
            yield
    finally:
        for hook in hooks:
            hook.remove()
        for module, weight in originals:
            module.weight = weight


def cast_once_bytes(model: Any, autocast: torch.dtype | None) -> int:
    """The memory that `cast_once`'s copies of the weights take."""
    if autocast is None:
        return 0
    return sum(m.weight.numel() * autocast.itemsize for m in _frozen_linears(model, autocast))


def _frozen_linears(model: Any, autocast: torch.dtype) -> list[torch.nn.Linear]:
    """The linear layers of the base model, whose weights training leaves frozen and
    `cast_once` casts, whether or not `model` carries its adapters yet: not the adapters' own,
    not ones already in the dtype, not the input embeddings (the default model's head shares
    them)."""
    embeddings = model.get_input_embeddings().weight
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and not any(part.startswith("lora_") for part in name.split("."))
        and module.weight.dtype != autocast
        and module.weight is not embeddings
    ]


def lora_config(options: TrainingOptions, only_answers: bool = False) -> LoraConfig:
    return LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha if options.alpha is not None else options.rank,
        lora_dropout=options.lora_dropout(only_answers),
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def answer_examples(examples: Sequence[TrainingExample]) -> list[int]:
    """The examples whose loss is an answer that must come out exactly: a text's language
    modelling never can."""
    return [
        i
        for i, example in enumerate(examples)
        if example.labels[0] == IGNORE_INDEX and example.must_be_exact
    ]


def unambiguous(examples: Sequence[TrainingExample], answers: Sequence[int]) -> list[int]:
    """Of these answers, those whose prompt no other one answers differently: a question stored
    twice with two answers can never come out exact both ways, and would keep a job that stops
    when every answer is exact from ever stopping."""
    prompts = {i: examples[i].prompt for i in answers}
    answers_to: dict[tuple[int, ...], set[tuple[int, ...]]] = defaultdict(set)
    for i in answers:
        answers_to[prompts[i]].add(tuple(examples[i].targets))
    return [i for i in answers if len(answers_to[prompts[i]]) == 1]


def only_answers(examples: Sequence[TrainingExample]) -> bool:
    """QA pairs alone, no text to learn."""
    return len(answer_examples(examples)) == len(examples)


def step_budget(options: TrainingOptions, examples: Sequence[TrainingExample]) -> int:
    # Only a job of answers alone is sure to stop early: its budget is an upper bound. A text
    # with questions about it may stop early too, once every answer is exact, within the usual
    # budget (the text itself is learned over the same steps).
    return options.total_steps(len(examples), options.stop_when_learned and only_answers(examples))


class _Steps:
    """Forward and backward of one batch as micro-batches under the plan."""

    def __init__(
        self,
        model: Any,
        examples: Sequence[TrainingExample],
        pad_id: int,
        plan: ComputePlan,
        terms: LossTerms = LossTerms(),
        teachers: Mapping[int, TeacherTargets] | None = None,
    ) -> None:
        self.model = model
        self.examples = examples
        self.pad_id = pad_id
        self.plan = plan
        self.terms = terms
        # By example index: what the teacher of context distillation predicted for it.
        self.teachers = teachers or {}
        # Per example, the positions whose next token is a label: a batch's loss is their mean.
        self._labelled = [
            sum(label != IGNORE_INDEX for label in example.labels[1:]) for example in examples
        ]
        # Tokens computed, padding included; real tokens computed; the examples' own tokens,
        # which rows that share a prefix compute fewer of.
        self.padded = 0
        self.real = 0
        self.apart = 0

    def run(self, indices: Sequence[int], backward: bool) -> tuple[float, dict[int, bool]]:
        """The batch's mean token loss and, per example, whether every answer was exact."""
        runs = micro_batches(indices, self.examples, self.plan.micro_batch_tokens)
        labelled = sum(self._labelled[i] for i in indices)
        loss_sum = 0.0
        exact: dict[int, bool] = {}
        for run in runs:
            batch = collate(self.examples, self.pad_id, self.model.device, run)
            in_run = members(run)
            self.padded += batch["input_ids"].numel()
            self.real += int((batch["owners"] >= 0).sum())
            self.apart += sum(len(self.examples[i].input_ids) for i in in_run)
            terms = LossTerms(
                self.terms.objective,
                self.terms.hidden_weight,
                [self.teachers.get(i) for i in in_run],
            )
            with self.plan.computing(self.model.device):
                result = labelled_loss(self.model, batch, terms)
            if backward:
                (result.total / max(1, labelled)).backward()
            loss_sum += result.total.item()
            exact.update(zip(in_run, result.exact, strict=True))
        return loss_sum / max(1, labelled), exact

    @property
    def padding_share(self) -> float:
        return 1 - self.real / self.padded if self.padded else 0.0

    @property
    def shared_share(self) -> float:
        """The share of the examples' tokens that shared prefixes saved computing."""
        return 1 - self.real / self.apart if self.apart else 0.0


def _learned(steps: _Steps, answers: Sequence[int], batch_size: int) -> bool:
    """Every answer exact, without dropout, on the current weights."""
    by_length = sorted(answers, key=lambda i: len(steps.examples[i].input_ids))
    steps.model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(by_length), batch_size):
                indices = by_length[start : start + batch_size]
                if not all(steps.run(indices, backward=False)[1].values()):
                    return False
        return True
    finally:
        steps.model.train()


def _teachers(
    model: Any,
    pad_id: int,
    examples: Sequence[TrainingExample],
    options: TrainingOptions,
    plan: ComputePlan,
) -> dict[int, TeacherTargets]:
    """The base model's predictions with each passage in the prompt, before any adapter."""
    if options.objective == "ce" or all(example.teacher_ids is None for example in examples):
        return {}
    started = time.monotonic()
    with plan.computing(model.device):
        teachers = teacher_targets(model, examples, pad_id, plan.micro_batch_tokens)
    log.info(
        "teacher of %s read %d examples (%d positions) in %.1fs",
        options.objective,
        len(teachers),
        sum(len(t.top_ids) for t in teachers.values()),
        time.monotonic() - started,
    )
    return teachers


def train_lora(
    model: Any,
    pad_id: int,
    examples: Sequence[TrainingExample],
    options: TrainingOptions,
    on_step: StepCallback | None = None,
    plan: ComputePlan = FULL_PRECISION,
) -> PeftModel:
    """Wraps `model` (modified in place) with a new LoRA adapter and trains it."""
    if not examples:
        raise ValueError("nothing to train on")
    torch.manual_seed(options.seed)
    teachers = _teachers(model, pad_id, examples, options, plan)
    config = lora_config(options, only_answers(examples))
    peft_model = get_peft_model(model, config)
    use_byte_mask_dropout(peft_model)
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    answers = unambiguous(examples, answer_examples(examples))
    stop_when_learned = options.stop_when_learned and bool(answers)
    total_steps = step_budget(options, examples)
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(
        optimizer, round(options.warmup_ratio * total_steps), total_steps
    )
    batch_size = min(options.batch_size, len(examples))
    batches = length_grouped_batches(examples, batch_size, options.seed)
    terms = LossTerms(options.objective, options.distill_hidden_weight)
    steps = _Steps(peft_model, examples, pad_id, plan, terms, teachers)
    exact = dict.fromkeys(answers, False)
    started = time.monotonic()
    with (
        checkpointing(peft_model, plan.checkpointed_layers),
        cast_once(peft_model, plan.autocast),
    ):
        for step in range(1, total_steps + 1):
            loss, rows = steps.run(next(batches), backward=True)
            exact.update((index, right) for index, right in rows.items() if index in exact)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            # Activations of varying lengths fragment glibc's heap, which keeps the freed pages:
            # over 16 article-sized steps the process held 1.82 GiB between steps without this
            # and 1.15 GiB with it (~11 ms a call). The peak within a step stays what it was.
            release_free_heap()
            if on_step is not None:
                on_step(step, total_steps, loss)
            if step % 10 == 0:
                log.debug(
                    "step %d/%d loss %.3f, answers exact %d of %d",
                    step,
                    total_steps,
                    loss,
                    sum(exact.values()),
                    len(exact),
                )
            if stop_when_learned and all(exact.values()):
                if _learned(steps, answers, batch_size):
                    break
                exact = dict.fromkeys(answers, False)
    learned = stop_when_learned and all(exact.values())
    log.info(
        "trained %d of %d steps on %d examples in %.1fs (%s, dropout %g, micro-batches of <= %d "
        "tokens, %d layers checkpointed, padding %.0f%%, %.0f%% of tokens saved by shared "
        "prefixes)%s",
        step,
        total_steps,
        len(examples),
        time.monotonic() - started,
        plan.precision,
        config.lora_dropout,
        plan.micro_batch_tokens,
        plan.checkpointed_layers,
        100 * steps.padding_share,
        100 * steps.shared_share,
        " (every answer exact: stopped early)" if learned and step < total_steps else "",
    )
    peft_model.eval()
    return peft_model
