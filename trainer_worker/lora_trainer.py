"""Trains one LoRA knowledge module with PEFT: all linear layers, alpha = r, AdamW, cosine.

QA knowledge stops early once it is learned. The logits each step computes anyway show whether
every answer token was the argmax at the example's latest visit; once that holds for all examples,
one pass without dropout, on the weights as they now are, confirms it (that pass is greedy
decoding's recall, teacher-forced). If it does not hold, training goes on and the evidence starts
afresh. Further steps would only spend time.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import get_cosine_schedule_with_warmup

from trainer_worker.options import TrainingOptions
from trainer_worker.training_data import IGNORE_INDEX, TrainingExample

log = logging.getLogger("loramem.trainer")

# Called after every optimizer step with (step, total_steps, loss); may raise to stop training.
StepCallback = Callable[[int, int, float], None]


def lora_config(options: TrainingOptions) -> LoraConfig:
    return LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha if options.alpha is not None else options.rank,
        lora_dropout=options.dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _collate(
    batch: Sequence[TrainingExample], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Pads to the longest example of this batch only (a fixed length measured twice as slow)."""
    width = max(len(example.input_ids) for example in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids)
        labels[row, :size] = torch.tensor(example.labels)
        attention_mask[row, :size] = 1
    tensors = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def _batches(
    count: int, batch_size: int, seed: int
) -> Any:  # an endless iterator of batches of example indices, reshuffled every epoch
    rng = random.Random(seed)
    order = list(range(count))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


def _learned(
    peft_model: Any, examples: Sequence[TrainingExample], batch_size: int, pad_id: int
) -> bool:
    """Every answer exact, without dropout, on the current weights."""
    peft_model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                batch = _collate(examples[start : start + batch_size], pad_id, peft_model.device)
                if not all(_exact_rows(peft_model(**batch).logits, batch["labels"])):
                    return False
        return True
    finally:
        peft_model.train()


def _exact_rows(logits: torch.Tensor, labels: torch.Tensor) -> list[bool]:
    """Per row: is the argmax right at every labelled position?"""
    targets = labels[:, 1:]
    wrong = (logits[:, :-1].argmax(-1) != targets) & (targets != IGNORE_INDEX)
    return (~wrong.any(-1)).tolist()


def stops_when_learned(options: TrainingOptions, examples: Sequence[TrainingExample]) -> bool:
    # Only answers can be checked exactly; a text's language modelling never is.
    return options.stop_when_learned and all(
        example.labels[0] == IGNORE_INDEX for example in examples
    )


def step_budget(options: TrainingOptions, examples: Sequence[TrainingExample]) -> int:
    return options.total_steps(len(examples), stops_when_learned(options, examples))


def train_lora(
    model: Any,
    pad_id: int,
    examples: Sequence[TrainingExample],
    options: TrainingOptions,
    on_step: StepCallback | None = None,
) -> PeftModel:
    """Wraps `model` (modified in place) with a new LoRA adapter and trains it."""
    if not examples:
        raise ValueError("nothing to train on")
    torch.manual_seed(options.seed)
    peft_model = get_peft_model(model, lora_config(options))
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    stop_when_learned = stops_when_learned(options, examples)
    total_steps = step_budget(options, examples)
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(
        optimizer, round(options.warmup_ratio * total_steps), total_steps
    )
    batch_size = min(options.batch_size, len(examples))
    batches = _batches(len(examples), batch_size, options.seed)
    exact = [False] * len(examples)
    started = time.monotonic()
    for step in range(1, total_steps + 1):
        indices = next(batches)
        batch = _collate([examples[i] for i in indices], pad_id, peft_model.device)
        output = peft_model(**batch)
        loss = output.loss
        if stop_when_learned:
            with torch.no_grad():
                for index, right in zip(
                    indices, _exact_rows(output.logits, batch["labels"]), strict=True
                ):
                    exact[index] = right
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step, total_steps, loss.item())
        if stop_when_learned and all(exact):
            if _learned(peft_model, examples, batch_size, pad_id):
                break
            exact = [False] * len(examples)
    learned = stop_when_learned and all(exact)
    log.info(
        "trained %d of %d steps on %d examples in %.1fs%s",
        step,
        total_steps,
        len(examples),
        time.monotonic() - started,
        " (every answer exact: stopped early)" if learned and step < total_steps else "",
    )
    peft_model.eval()
    return peft_model
