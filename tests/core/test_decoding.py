"""Batched greedy decoding, as the trainer's checks and recall use it."""

from __future__ import annotations

from pathlib import Path

from loramem.core.base_model import load_causal_lm
from loramem.core.decoding import DecodeRow, SamplingParams, decode_batch


def test_at_most_max_rows_decode_and_waiting_rows_take_the_places_of_finished_ones(
    tiny_model_dir: Path,
) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    sentence = "the pet of Zorblax is a blue ferret named Quiggle who lives in Talvenna"
    prompts = [tokenizer(sentence[: 12 + 6 * n])["input_ids"] for n in range(7)]
    lengths = [2, 9, 3, 12, 4, 6, 5]

    def rows() -> list[DecodeRow]:
        return [
            DecodeRow(p, SamplingParams(max_tokens=n, ignore_eos=True))
            for p, n in zip(prompts, lengths, strict=True)
        ]

    alone = rows()
    for row in alone:
        decode_batch(model, tokenizer, [row])
    widths: list[int] = []
    together = rows()
    decode_batch(
        model, tokenizer, together, select_adapters=lambda r: widths.append(len(r)), max_rows=4
    )
    assert [r.generated for r in together] == [r.generated for r in alone]
    assert max(widths) == 4
    # Forward passes: the first four rows' prefill, then steps, a join whenever a place or more
    # is free (a quarter of 4), and steps until the longest (12 tokens) is done; fixed chunks of
    # four would take 1 + 11 + 1 + 5 = 18.
    assert len(widths) < 18
