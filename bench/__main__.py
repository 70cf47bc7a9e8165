"""Every benchmark, then a summary with one line per ratio (`make bench`, `make bench QUICK=1`).

    .venv/bin/python -m bench [--quick]

--quick runs reduced versions (fewer tokens, swaps, steps and PhoneBook entries; loramem's time to
95% recall without the bare loop's; no HTTP load levels and no recall grid) in under 15 minutes
on 2 CPU cores. Results: bench/results/*.json, *.png.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from bench import (
    activation_bytes,
    checks,
    claim_throughput,
    compose_choice,
    compose_latency,
    decode_rows,
    engine_precision,
    hot_swap,
    http_load,
    in_server,
    memory_growth,
    recall,
    serving,
    train_step,
    training,
)
from bench.common import SUMMARY

Run = tuple[str, Callable[[list[str]], Any], list[str]]

FULL: list[Run] = [
    ("serving", serving.main, []),
    ("hot swap", hot_swap.main, []),
    ("train step", train_step.main, []),
    ("activation bytes", activation_bytes.main, []),
    ("training", training.main, []),
    ("in server", in_server.main, []),
    ("memory growth", memory_growth.main, []),
    ("compose latency", compose_latency.main, []),
    ("compose choice", compose_choice.main, []),
    ("decode rows", decode_rows.main, []),
    ("checks", checks.main, []),
    ("engine precision", engine_precision.main, []),
    ("claim throughput", claim_throughput.main, []),
    ("http load", http_load.main, ["--requests", "48"]),
    ("recall", recall.main, ["--loads", "1K,2K", "--ranks", "4,8,16"]),
]
QUICK: list[Run] = [
    ("train step", train_step.main, ["--width", "100"]),
    ("serving", serving.main, ["--tokens", "16"]),
    ("hot swap", hot_swap.main, ["--engines", "hf", "--swaps", "3"]),
    (
        "training",
        training.main,
        ["--entries", "16", "--steps", "8", "--no-race", "--only", "throughput,race"],
    ),
    ("claim throughput", claim_throughput.main, ["--jobs", "100"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    began = time.perf_counter()
    for name, run, argv in QUICK if args.quick else FULL:
        print(f"== {name} {' '.join(argv)}", flush=True)
        started = time.perf_counter()
        run(argv)
        print(f"== {name}: {time.perf_counter() - started:.0f} s", flush=True)
    print(f"\nsummary ({time.perf_counter() - began:.0f} s in all):")
    for line in SUMMARY:
        print(f"  {line}")


if __name__ == "__main__":
    main()
