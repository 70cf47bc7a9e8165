"""A decoding step of the default model by rows of the batch, with the stock `nn.Linear` against
`FewRowsLinear` (`loramem/core/few_rows.py`), both in the same run.

    .venv/bin/python -m bench.decode_rows [--rows 1,2,3,4,8,16,32] [--steps 16] [--rounds 2]

Each row's prompt is `--prompt` random tokens, prefilled once; then `--steps` greedy steps are
timed (the mean a step), the two ways taking turns over `--rounds` rounds; the best round of each
counts. The weights are the engine's default (fp32). Writes bench/results/decode_rows.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from bench.common import model_path, ratio, save
from loramem.core.base_model import load_causal_lm
from loramem.core.few_rows import FewRowsLinear


def step_ms(model: Any, rows: int, prompt: int, steps: int) -> float:
    ids = torch.randint(100, 40_000, (rows, prompt))
    with torch.inference_mode():
        cache = DynamicCache()
        logits = model(input_ids=ids, past_key_values=cache, logits_to_keep=1).logits
        for done in range(steps + 1):
            if done == 1:  # the first step's allocations are not timed
                started = time.perf_counter()
            tokens = logits[:, -1].argmax(-1, keepdim=True)
            logits = model(input_ids=tokens, past_key_values=cache, logits_to_keep=1).logits
    return (time.perf_counter() - started) / steps * 1000


def set_linear_class(model: Any, kind: type[nn.Linear]) -> None:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.__class__ = kind


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,2,3,4,8,16,32")
    parser.add_argument("--prompt", type=int, default=40)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, _ = load_causal_lm(model_path())
    ways = {"stock nn.Linear": nn.Linear, "FewRowsLinear": FewRowsLinear}
    best: dict[str, dict[int, float]] = {way: {} for way in ways}
    row_counts = [int(part) for part in args.rows.split(",")]
    for _ in range(args.rounds):
        for way, kind in ways.items():
            set_linear_class(model, kind)
            for rows in row_counts:
                took = step_ms(model, rows, args.prompt, args.steps)
                best[way][rows] = min(best[way].get(rows, took), took)
    report: dict[str, Any] = {"step_ms": best, "ratios": []}
    for rows in row_counts:
        print(
            f"{rows:>3} rows: stock {best['stock nn.Linear'][rows]:.1f} ms, "
            f"FewRowsLinear {best['FewRowsLinear'][rows]:.1f} ms a step"
        )
        report["ratios"].append(
            ratio(
                f"decoding step of {rows} rows, FewRowsLinear / stock nn.Linear",
                best["FewRowsLinear"][rows],
                best["stock nn.Linear"][rows],
            )
        )
    save("decode_rows", report)
    return report


if __name__ == "__main__":
    main()
