"""Which examples train together, and how a batch is cut to fit the memory bound.

Batches group examples of similar length: a 40-token question padded to the 300-token
context-aware example beside it computes mostly padding. Each pass shuffles the examples, sorts
them by length within windows of `GROUP_WINDOW` batches and shuffles the order of the batches
cut from them, so that every example still meets varied neighbours from pass to pass.

Examples that begin with the same tokens share them: the questions asked with their passage in
the prompt (augment "mix") repeat a passage of about 60 words (90 tokens) before each 20-token
question.
Within a batch, such examples become one row: the passage once, then each one's own tokens,
each attending to the passage and to itself only, at the positions it has alone. The loss is the
one the examples have apart; the row computes the passage once instead of once each. Sorting
keeps the examples of one passage next to each other so that they meet in a batch. The other
examples of a batch share what they have in common the same way: short QA pairs, a third of whose
tokens are the chat template's opening and the words their questions begin with.

A batch too large for the memory bound is computed as several micro-batches whose gradients
add up to the batch's (the loss is normalised by the whole batch's labelled tokens).

A micro-batch is padded to its widest row rounded up to one of a few widths (`padded_width`):
oneDNN builds and keeps a kernel for every shape it multiplies, and with micro-batches of nearly
every width up to 211 tokens each job left the server larger (after two jobs 1.68 GiB resident
and a peak of 2.38 GiB; with the widths rounded, 1.42 and 2.16 GiB; `bench.memory_growth`).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
# Batches per sorting window: wide enough that lengths line up, narrow enough to keep shuffling.
GROUP_WINDOW = 16
# The leading tokens that make examples the questions of one passage (rows of them share it), and
# the fewest that other examples must have in common to share a row: the chat template's opening
# (8 tokens on SmolLM2) and the words their questions begin with. Sharing only passages, PhoneBook
# 1K trained at 0.82-1.19 s a step (three seeds); sharing openings too, at 0.53-0.68 s.
MIN_SHARED_TOKENS = 32
MIN_SHARED_OPENING = 8


def padded_width(width: int) -> int:
    """`width` rounded up to a multiple of an eighth of the power of two below it (and of 8): 8
    widths an octave, at most an eighth more tokens (100 -> 104, 200 -> 208, 300 -> 320)."""
    step = _width_step(width)
    return -(-width // step) * step


def widest_within(tokens: int) -> int:
    """The longest example whose `padded_width` is at most `tokens`."""
    step = _width_step(tokens)
    return tokens // step * step


def _width_step(width: int) -> int:
    return max(8, 1 << max(0, width.bit_length() - 4))


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

    @property
    def shareable(self) -> int:
        """How many leading tokens this example could share with others: those before the
        position that predicts its first label (each example predicts its own labels)."""
        first = next(
            (i for i in range(1, len(self.labels)) if self.labels[i] != IGNORE_INDEX),
            len(self.labels),
        )
        return first - 1

    @property
    def prefix_key(self) -> tuple[int, ...] | None:
        """The leading tokens that the examples of one passage have in common; None for one
        that has no passage to share (it is labelled from its start, or its prompt is short)."""
        return self.prefix(MIN_SHARED_TOKENS)

    def prefix(self, length: int) -> tuple[int, ...] | None:
        """Its first `length` tokens, if it may share that many."""
        return tuple(self.input_ids[:length]) if self.shareable >= length else None

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
    lengths = _sorting_lengths(examples)
    while True:
        rng.shuffle(order)
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            grouped = sorted(order[start : start + window], key=lambda i: lengths[i])
            batches.extend(
                grouped[offset : offset + batch_size]
                for offset in range(0, len(grouped), batch_size)
            )
        rng.shuffle(batches)
        yield from batches


def _sorting_lengths(
    examples: Sequence[TrainingExample],
) -> list[tuple[float, tuple[int, ...], int]]:
    """Per example, what batches sort by: the mean length of the examples that share its prefix
    (its own where none does), that prefix, then its own length; so the examples of a prefix
    stay together among examples of their length."""
    keys = [example.prefix_key for example in examples]
    members: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for example, key in zip(examples, keys, strict=True):
        if key is not None:
            members[key].append(len(example.input_ids))
    return [
        (
            sum(members[key]) / len(members[key]) if key is not None else len(example.input_ids),
            key or (),
            len(example.input_ids),
        )
        for example, key in zip(examples, keys, strict=True)
    ]


@dataclass(frozen=True)
class Row:
    """One row of a batch: examples (by index) computed as their first `shared` tokens, which
    they all have, followed by each one's remaining tokens."""

    members: tuple[int, ...]
    shared: int = 0

    def width(self, examples: Sequence[TrainingExample]) -> int:
        own = sum(len(examples[i].input_ids) - self.shared for i in self.members)
        return self.shared + own


def shared_rows(
    indices: Sequence[int], examples: Sequence[TrainingExample], max_tokens: int
) -> list[Row]:
    """The batch's examples as rows, each no wider than max_tokens unless one example alone is:
    those that begin with the same passage together, then, of the examples left alone, those
    that begin with the same chat template's opening."""
    rows: list[Row] = []
    alone: list[int] = []
    for row in _rows_by_prefix(indices, examples, max_tokens, MIN_SHARED_TOKENS):
        if len(row.members) > 1:
            rows.append(row)
        else:
            alone.extend(row.members)
    return rows + _rows_by_prefix(alone, examples, max_tokens, MIN_SHARED_OPENING)


def _rows_by_prefix(
    indices: Sequence[int], examples: Sequence[TrainingExample], max_tokens: int, least: int
) -> list[Row]:
    """Rows of the examples that have their first `least` tokens in common, each alone where
    it has no such tokens to share."""
    by_prefix: dict[tuple[int, ...] | None, list[int]] = defaultdict(list)
    for index in indices:
        by_prefix[examples[index].prefix(least)].append(index)
    rows = [Row((index,)) for index in by_prefix.pop(None, [])]
    for group in by_prefix.values():
        row = Row((group[0],))
        for index in group[1:]:
            joined = Row((*row.members, index), _common_prefix(examples, row.members[0], index))
            if len(row.members) > 1:
                joined = Row(joined.members, min(joined.shared, row.shared))
            if padded_width(joined.width(examples)) <= max_tokens:
                row = joined
            else:
                rows.append(row)
                row = Row((index,))
        rows.append(row)
    return rows


def _common_prefix(examples: Sequence[TrainingExample], first: int, second: int) -> int:
    a, b = examples[first], examples[second]
    limit = min(a.shareable, b.shareable)
    shared = 0
    while shared < limit and a.input_ids[shared] == b.input_ids[shared]:
        shared += 1
    return shared


def micro_batches(
    indices: Sequence[int], examples: Sequence[TrainingExample], max_tokens: int
) -> list[list[Row]]:
    """The batch as rows (see `shared_rows`), split into runs, widest row first, whose padded
    size rows x padded width <= max_tokens; a row wider than max_tokens runs alone."""
    rows = sorted(
        shared_rows(indices, examples, max_tokens),
        key=lambda row: row.width(examples),
        reverse=True,
    )
    runs: list[list[Row]] = []
    for row in rows:
        # A run's width is its first (widest) row's.
        if runs and (len(runs[-1]) + 1) * padded_width(runs[-1][0].width(examples)) <= max_tokens:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


def members(rows: Sequence[Row]) -> list[int]:
    """The examples of these rows, in the order that `collate` numbers them."""
    return [index for row in rows for index in row.members]


def collate(
    examples: Sequence[TrainingExample],
    pad_id: int,
    device: torch.device,
    rows: Sequence[Row] | None = None,
) -> dict[str, torch.Tensor]:
    """The rows as tensors (by default each example its own row), padded on the right to the
    `padded_width` of this batch's widest row (a fixed length for all measured twice as slow).

    `owners` numbers each position's example in the order of `members(rows)` (-1 on padding).
    Where a row shares a prefix, `attention_mask` is [rows, 1, width, width] (True: may attend)
    and `position_ids` restart each example's own tokens where the prefix ends; elsewhere the
    attention is plainly causal and `attention_mask` marks the real tokens."""
    rows = rows if rows is not None else [Row((i,)) for i in range(len(examples))]
    width = padded_width(max(row.width(examples) for row in rows))
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    owners = torch.full(shape, -1, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    # Per position, the part of its row it belongs to: 0 the shared prefix, k the k-th example's
    # own tokens, -1 padding.
    parts = torch.full(shape, -1, dtype=torch.long)
    owner = 0
    for r, row in enumerate(rows):
        first = examples[row.members[0]]
        input_ids[r, : row.shared] = torch.tensor(first.input_ids[: row.shared])
        positions[r, : row.shared] = torch.arange(row.shared)
        parts[r, : row.shared] = 0
        owners[r, : row.shared] = owner
        at = row.shared
        for part, index in enumerate(row.members, start=1):
            example = examples[index]
            own = slice(at, at + len(example.input_ids) - row.shared)
            input_ids[r, own] = torch.tensor(example.input_ids[row.shared :])
            labels[r, own] = torch.tensor(example.labels[row.shared :])
            positions[r, own] = torch.arange(row.shared, len(example.input_ids))
            parts[r, own] = part
            owners[r, own] = owner
            owner += 1
            at = own.stop
    batch = {"input_ids": input_ids, "labels": labels, "owners": owners}
    if any(len(row.members) > 1 for row in rows):
        batch["attention_mask"] = _shared_prefix_mask(parts)
        batch["position_ids"] = positions
    else:
        batch["attention_mask"] = (parts >= 0).long()
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _shared_prefix_mask(parts: torch.Tensor) -> torch.Tensor:
    """Causal attention within each part and to the shared prefix; a padding position attends
    to itself alone (a position that attends to nothing would give NaN)."""
    width = parts.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    query, key = parts[:, :, None], parts[:, None, :]
    same = (query == key) & (query >= 0)
    allowed = causal & (same | ((key == 0) & (query > 0)))
    allowed |= torch.eye(width, dtype=torch.bool)
    return allowed[:, None]
