"""Prefilling rows whose beginnings are shared: the same numbers as each row run alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loramem.core.base_model import load_causal_lm
from loramem.core.decoding import DecodeRow, SamplingParams, decode_batch
from loramem.core.prefill import GROUP_COST_TOKENS, prefill, shared_beginnings
from loramem.trainer.knowledge import base_model_scorer

PASSAGE = list(range(1000, 1060))  # a passage of 60 tokens that several questions follow


def test_rows_are_grouped_by_what_they_begin_with_where_it_saves_tokens() -> None:
    first, second = [*PASSAGE, 5, 6, 7], [*PASSAGE, 8, 9]
    other = [*PASSAGE[:20], 3, 3, 3]  # shares 20 tokens: less than a group costs
    alone = [7, 7, 7, 7]
    rows = [first, second, other, alone]
    shareable = [len(row) - 1 for row in rows]
    assert 20 < GROUP_COST_TOKENS < 60
    assert shared_beginnings(rows, shareable) == [(60, [0, 1]), (22, [2]), (3, [3])]
    # What a row may share caps its group's beginning; rows of other keys are never grouped.
    assert shared_beginnings(rows, [50, *shareable[1:]])[0] == (50, [0, 1])
    assert shared_beginnings(rows, shareable, ["a", "b", "b", "b"])[:2] == [(62, [0]), (61, [1])]


def test_shared_beginnings_give_each_row_its_own_logits(tiny_model_dir: Path) -> None:
    model, _ = load_causal_lm(tiny_model_dir)
    rows = [[*PASSAGE, 11, 12, 13], [*PASSAGE, 14], [*PASSAGE, 15, 16], [21, 22, 23]]
    passes: list[list[str | None]] = []
    with torch.inference_mode():
        together = prefill(model, rows, pad_id=0, keep=2, select_adapters=passes.append)
        # Three rows share their passage: two passes, the beginnings' (two rows: the passage,
        # the row alone) and the rests'.
        assert [len(rows) for rows in passes] == [2, 4]
        for index, row in enumerate(rows):
            alone = prefill(model, [row], pad_id=0, keep=2)
            torch.testing.assert_close(
                together.logits[index], alone.logits[0], rtol=1e-4, atol=1e-4
            )
            assert int(together.last_positions[index]) == len(row) - 1


def test_rows_that_share_a_passage_decode_as_each_row_alone(tiny_model_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    prompts = [[*PASSAGE, 40 + n, 50 + n] for n in range(5)] + [[60, 61, 62]]

    def rows() -> list[DecodeRow]:
        return [
            DecodeRow(p, SamplingParams(max_tokens=3 + n, ignore_eos=True))
            for n, p in enumerate(prompts)
        ]

    alone = rows()
    for row in alone:
        decode_batch(model, tokenizer, [row])
    together = rows()
    passes: list[list[str | None]] = []
    decode_batch(model, tokenizer, together, select_adapters=passes.append, max_rows=4)
    assert [r.generated for r in together] == [r.generated for r in alone]
    # The first four rows joined sharing their passage: one row for it, then the four rests.
    assert [len(rows) for rows in passes[:2]] == [1, 4]


def test_candidates_of_many_questions_score_as_each_question_alone(tiny_model_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    score = base_model_scorer(model, tokenizer)
    passage = "Kelda Looms was started in 1962 by two sisters. It now employs forty-two people."
    requests = [
        (passage, "When was Kelda Looms started?", ["1962", "forty-two people", "two sisters"]),
        (passage, "Who started Kelda Looms?", ["two sisters", "1962"]),
        ("", "Who started Kelda Looms?", ["two sisters", "1962"]),
    ]
    together = score(requests)
    for request, scores in zip(requests, together, strict=True):
        [alone] = score([request])
        assert scores == pytest.approx(alone, abs=1e-3)
        # Each candidate as if it were the only one.
        [[last]] = score([(request[0], request[1], [request[2][-1]])])
        assert last == pytest.approx(scores[-1], abs=1e-3)
