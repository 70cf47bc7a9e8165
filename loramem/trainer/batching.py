"""Which examples train together, and how a batch is cut to fit the memory bound.

Batches group examples of similar length: a 40-token question padded to the 300-token
context-aware example beside it computes mostly padding. Each pass shuffles the examples, sorts
them by length within windows of `GROUP_WINDOW` batches and shuffles the order of the batches
cut from them, so that every example still meets varied neighbours from pass to pass.

A batch too large for the memory bound is computed as several micro-batches whose gradients
add up to the batch's (the loss is normalised by the whole batch's labelled tokens).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
# Batches per sorting window: wide enough that lengths line up, narrow enough to keep shuffling.
GROUP_WINDOW = 16


@dataclass(frozen=True)
class TrainingExample:
    input_ids: list[int]
    labels: list[int]
    # The same labelled tokens after a prompt that also holds their source passage: what the
    # teacher of context distillation reads (see `objective`). None where there is no passage.
    teacher_ids: list[int] | None = None
    # Whether training may stop only once its labels are predicted exactly: a recital (sentences
    # recited about a name) teaches what it says, not its every word.
    must_be_exact: bool = True

    @property
    def targets(self) -> list[int]:
        """The tokens the loss covers, in order (each predicted from the positions before it)."""
        return [label for label in self.labels[1:] if label != IGNORE_INDEX]

    @property
    def prompt(self) -> tuple[int, ...]:
        """The tokens the loss does not cover: for an answer, the question that asks it."""
        pairs = zip(self.input_ids, self.labels, strict=True)
        return tuple(token for token, label in pairs if label == IGNORE_INDEX)

    def teacher_example(self) -> TrainingExample:
        """The teacher's sequence, labelled at the same target tokens (they end both)."""
        assert self.teacher_ids is not None
        targets = self.targets
        if self.teacher_ids[len(self.teacher_ids) - len(targets) :] != targets:
            raise ValueError("a teacher sequence must end with its example's labelled tokens")
        prompt = len(self.teacher_ids) - len(targets)
        return TrainingExample(self.teacher_ids, [IGNORE_INDEX] * prompt + targets)


def length_grouped_batches(
    examples: Sequence[TrainingExample], batch_size: int, seed: int
) -> Iterator[list[int]]:
    """An endless iterator of batches of example indices, regrouped every pass."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    window = batch_size * GROUP_WINDOW
    while True:
        rng.shuffle(order)
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            grouped = sorted(
                order[start : start + window], key=lambda i: len(examples[i].input_ids)
            )
            batches.extend(
                grouped[offset : offset + batch_size]
                for offset in range(0, len(grouped), batch_size)
            )
        rng.shuffle(batches)
        yield from batches


def micro_batches(
    indices: Sequence[int], examples: Sequence[TrainingExample], max_tokens: int
) -> list[list[int]]:
    """Splits a batch (longest first) into runs whose padded size rows x width <= max_tokens;
    an example longer than max_tokens runs alone."""
    ordered = sorted(indices, key=lambda i: len(examples[i].input_ids), reverse=True)
    runs: list[list[int]] = []
    for index in ordered:
        # A run's width is its first (longest) example's.
        if runs and (len(runs[-1]) + 1) * len(examples[runs[-1][0]].input_ids) <= max_tokens:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def collate(
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
