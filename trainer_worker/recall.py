"""Recall: the share of probes the trained model answers correctly, greedy, as /generate would."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from server.engines.base import SamplingParams
from server.engines.decoding import DecodeRow, decode_batch
from trainer_worker.training_data import RecallProbe, recalled


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
    hits = 0
    for start in range(0, len(probes), batch_size):
        chunk = probes[start : start + batch_size]
        rows = [
            DecodeRow(
                probe.prompt_ids,
                SamplingParams(max_tokens=len(tokenizer(probe.expected)["input_ids"]) + 8),
            )
            for probe in chunk
        ]
        decode_batch(model, tokenizer, rows)
        hits += sum(
            matches(probe.expected, row.text) for probe, row in zip(chunk, rows, strict=True)
        )
    return hits / len(probes)
