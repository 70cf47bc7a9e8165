"""Recall: the share of probes the trained model answers correctly, greedy, as /generate would."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from loramem.core.decoding import DecodeRow, SamplingParams, decode_batch
from loramem.trainer.matching import recalled
from loramem.trainer.training_data import RecallProbe


def greedy_replies(
    model: Any, tokenizer: Any, requests: Sequence[tuple[list[int], int]], batch_size: int = 16
) -> list[str]:
    """What the model answers to each (prompt ids, most new tokens), greedy, as /generate would,
    `batch_size` rows decoding at a time."""
    rows = [DecodeRow(prompt, SamplingParams(max_tokens=most)) for prompt, most in requests]
    decode_batch(model, tokenizer, rows, max_rows=batch_size)
    return [row.text for row in rows]


def measure_recall(
    model: Any,
    tokenizer: Any,
    probes: Sequence[RecallProbe],
    batch_size: int = 16,
    matches: Callable[[str, str], bool] = recalled,
) -> float:
    """The share of `probes` whose greedy answer `matches(expected, generated)`."""
    if not probes:
        return 0.0
    requests = [
        (probe.prompt_ids, len(tokenizer(probe.expected)["input_ids"]) + 8) for probe in probes
    ]
    replies = greedy_replies(model, tokenizer, requests, batch_size)
    hits = sum(matches(p.expected, reply) for p, reply in zip(probes, replies, strict=True))
    return hits / len(probes)
