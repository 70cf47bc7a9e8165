"""The HF engine's base weights in bf16 against fp32: greedy answers, decoding speed and memory.

    .venv/bin/python -m bench.engine_precision [--tokens 24] [--adapters 1]

Each precision runs in a fresh process: the HF engine answers greedily every question of
`bench/data/prose/questions.json` about its 8 articles (not the two long documents), asked alone
and with its article in the prompt (as `rag` asks), on the base model and on `--adapters` random
rank-8 adapters (each question on one of them, as a topic's requests are), 16 requests at a time.
Prints how many answers are the same token for token, and how many agree on their first 8
tokens; the ratio of decoding times; and of each process's peak memory (VmHWM). This is what
`LORAMEM_WEIGHTS_PRECISION=bf16` changes. Needs bf16 instructions (avx512_bf16 or amx_bf16):
without them bf16 is emulated, and the setting falls back to fp32.
Writes bench/results/engine_precision.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PROSE,
    in_fresh_process,
    make_adapters,
    model_path,
    ratio,
    report_to_parent,
    save,
)

PRECISIONS = ("fp32", "bf16")
CONCURRENT = 16
AGREEING_TOKENS = 8
# The articles; the two long documents' prompts would take most of the run.
MAX_WORDS = 600


def _prompts() -> list[tuple[str, str | None]]:
    """(question, the article it is about or None) for every question of an article, both ways."""
    questions = json.loads((PROSE / "questions.json").read_text())
    asked: list[tuple[str, str | None]] = []
    for article, pairs in questions.items():
        text = (PROSE / f"{article}.txt").read_text()
        if len(text.split()) > MAX_WORDS:
            continue
        for question, _ in pairs:
            asked += [(question, None), (question, text)]
    return asked


async def _answers(precision: str, tokens: int, adapters: int, folder: Path) -> dict[str, Any]:
    from loramem.core.prompting import context_block, question_ids, with_context
    from loramem.serving.engines import LoRAAdapter, SamplingParams
    from loramem.serving.engines.hf import HFEngine

    model = model_path()
    loras = [
        LoRAAdapter(f"a{n}", n + 1, path, 8)
        for n, path in enumerate(make_adapters(model, folder, adapters))
    ]
    engine = HFEngine(model, max_batch_size=CONCURRENT, precision=precision)
    await engine.start()
    tokenizer = engine.tokenizer
    prompts = [
        question_ids(tokenizer, with_context(context_block([text]) if text else None, question))
        for question, text in _prompts()
    ]
    params = SamplingParams(max_tokens=tokens)

    async def answer(request_id: str, prompt: list[int], adapter: Any) -> list[int]:
        tokens: list[int] = []
        async for output in engine.generate(request_id, prompt, params, adapter):
            tokens = output.token_ids
        return tokens

    workloads = {"base": [], "random adapters": loras} if loras else {"base": []}
    answers: dict[str, list[list[int]]] = {}
    seconds: dict[str, float] = {}
    try:
        for name, pool in workloads.items():
            outputs: list[list[int]] = []
            started = time.perf_counter()
            for first in range(0, len(prompts), CONCURRENT):
                outputs += await asyncio.gather(
                    *(
                        answer(f"{name}-{n}", prompts[n], pool[n % len(pool)] if pool else None)
                        for n in range(first, min(first + CONCURRENT, len(prompts)))
                    )
                )
            seconds[name] = time.perf_counter() - started
            answers[name] = outputs
    finally:
        await engine.shutdown()
    return {"answers": answers, "seconds": seconds}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--adapters", type=int, default=1)
    parser.add_argument("--one", choices=PRECISIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        with tempfile.TemporaryDirectory() as folder:
            result = asyncio.run(_answers(args.one, args.tokens, args.adapters, Path(folder)))
        report_to_parent(result)
        return result
    from loramem.core.base_model import bf16_supported

    if not bf16_supported("cpu"):
        print("  skipped: without bf16 instructions, servers load fp32 weights here", flush=True)
        return {}
    shape = ["--tokens", str(args.tokens), "--adapters", str(args.adapters)]
    results = {
        p: in_fresh_process("bench.engine_precision", "--one", p, *shape) for p in PRECISIONS
    }
    full, half = (results[p] for p in PRECISIONS)
    report: dict[str, Any] = {"prompts": len(_prompts()), "tokens": args.tokens, "ratios": []}
    for name, wanted in full["answers"].items():
        got = half["answers"][name]
        same = sum(a == b for a, b in zip(wanted, got, strict=True))
        start = sum(
            a[:AGREEING_TOKENS] == b[:AGREEING_TOKENS] for a, b in zip(wanted, got, strict=True)
        )
        report[name] = {
            "same_answers": same,
            f"same_first_{AGREEING_TOKENS}_tokens": start,
            "seconds": {p: results[p]["seconds"][name] for p in PRECISIONS},
        }
        print(
            f"  {name}: {same} of {len(wanted)} greedy answers the same in bf16, "
            f"{start} the same in their first {AGREEING_TOKENS} tokens",
            flush=True,
        )
        report["ratios"].append(
            ratio(
                f"decoding time {name}, bf16/fp32 weights",
                half["seconds"][name],
                full["seconds"][name],
            )
        )
    report["ratios"].append(ratio("peak memory bf16/fp32", half["peak_gib"], full["peak_gib"]))
    save("engine_precision", report)
    return report


if __name__ == "__main__":
    main()
