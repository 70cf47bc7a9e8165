"""Prefilling a batch of token rows, the beginning that rows share computed once.

The trainer's checks ask each question written from a sentence with that sentence's passage in
front of it, and score every candidate answer after the same prompt: rows that begin with the
same tokens. Consecutive rows that share a long enough beginning form a group; each group's
beginning runs once (a row of its own), its KV cache is repeated for the group's rows, and only
each row's rest runs after it, the padding between the two hidden by the attention mask and the
positions counted from the mask. Rows that share nothing run as one left-padded batch, as
before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

__all__ = ["Prefilled", "prefill", "shared_beginnings"]

# What a group costs beyond its tokens, counted in tokens: its start's own row, padded to the
# longest start, and the pass that runs it. Rows that share only a chat template's opening
# (about 8 tokens on SmolLM2) are not worth it.
GROUP_COST_TOKENS = 32


@dataclass
class Prefilled:
    # Rows x `keep` x vocabulary: the logits of each row's last `keep` positions.
    logits: torch.Tensor
    cache: DynamicCache
    # Rows x cached positions: 1 where a row has a token, 0 where it is padded.
    mask: torch.Tensor
    # Rows x 1: the position of each row's last token.
    last_positions: torch.Tensor


def shared_beginnings(
    rows: Sequence[Sequence[int]], shareable: Sequence[int], keys: Sequence[Any] | None = None
) -> list[tuple[int, list[int]]]:
    """Consecutive rows (of one key) in groups, as (tokens the group shares, row indices), the
    split that runs the fewest tokens, each group counted GROUP_COST_TOKENS more: a group shares
    what all its rows begin with, at most each row's `shareable`; a row alone "shares" its
    `shareable` with itself."""
    count = len(rows)
    # after[n]: the tokens row n shares with row n + 1 (0 across keys).
    after = [
        0 if keys is not None and keys[n] != keys[n + 1] else _common_length(rows[n], rows[n + 1])
        for n in range(count - 1)
    ]
    # best[n]: (tokens run, groups) for the first n rows.
    best: list[tuple[int, list[tuple[int, list[int]]]]] = [(0, [])]
    for end in range(1, count + 1):
        last = end - 1
        choice = (best[last][0] + len(rows[last]), [*best[last][1], (shareable[last], [last])])
        shared, length = shareable[last], len(rows[last])
        for first in range(last - 1, -1, -1):
            shared = min(shared, after[first], shareable[first])
            if shared < 1:
                break
            length += len(rows[first])
            tokens = best[first][0] + GROUP_COST_TOKENS + shared + length - shared * (end - first)
            if tokens < choice[0]:
                choice = (tokens, [*best[first][1], (shared, list(range(first, end)))])
        best.append(choice)
    return best[count][1]


def prefill(
    model: Any,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    *,
    keep: int = 1,
    shareable: Sequence[int] | None = None,
    adapters: Sequence[str | None] | None = None,
    select_adapters: Callable[[list[str | None]], None] | None = None,
) -> Prefilled:
    """Runs `rows` (token ids) through `model`, sharing the beginnings of consecutive rows; row
    n shares at most `shareable[n]` tokens, and never its last `keep`, whose logits are kept."""
    most = [len(row) - keep for row in rows]
    shareable = [max(0, min(s, m)) for s, m in zip(shareable or most, most, strict=True)]
    names: list[str | None] = list(adapters) if adapters is not None else [None] * len(rows)
    groups = shared_beginnings(rows, shareable, names)
    cache = DynamicCache()
    if len(groups) == len(rows) or min(length for length, _ in groups) < 1:
        ids, mask = _left_padded(rows, pad_id, model.device)
        positions = _positions(mask)
        logits = _forward(model, ids, mask, positions, cache, keep, names, select_adapters)
        return Prefilled(logits, cache, mask, positions[:, -1:])
    group_of = [0] * len(rows)
    for number, (_, members) in enumerate(groups):
        for index in members:
            group_of[index] = number
    starts = [rows[members[0]][:length] for length, members in groups]
    start_ids, start_mask = _left_padded(starts, pad_id, model.device)
    _forward(
        model,
        start_ids,
        start_mask,
        _positions(start_mask),
        cache,
        1,
        [names[members[0]] for _, members in groups],
        select_adapters,
    )
    repeat = torch.tensor(group_of, device=model.device)
    cache.batch_select_indices(repeat)
    rests = [row[groups[group_of[n]][0] :] for n, row in enumerate(rows)]
    rest_ids, rest_mask = _left_padded(rests, pad_id, model.device)
    mask = torch.cat([start_mask[repeat], rest_mask], dim=1)
    positions = _positions(mask)[:, -rest_ids.shape[1] :]
    logits = _forward(model, rest_ids, mask, positions, cache, keep, names, select_adapters)
    return Prefilled(logits, cache, mask, positions[:, -1:])


def _forward(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: DynamicCache,
    keep: int,
    adapters: list[str | None],
    select_adapters: Callable[[list[str | None]], None] | None,
) -> torch.Tensor:
    if select_adapters is not None:
        select_adapters(adapters)
    output = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=keep,
    )
    return output.logits


def _left_padded(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask, each row padded on the left: every row's last token in the last column."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[index, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _common_length(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length
