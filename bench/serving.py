"""Serving speed through the HTTP server against the bare engines, same model, prompts and
concurrency, in one run: throughput, latency and memory, per engine and adapter mix.

    .venv/bin/python -m bench.serving [--engines hf,vllm] [--requests 16] [--tokens 64]

Workloads: `--requests` concurrent requests of exactly `--tokens` new tokens (greedy, ignore_eos)
on the base model, on 1 adapter, and on 4 and 16 distinct rank-8 adapters (random weights).
- bare HF: transformers `generate` on the whole batch, PEFT's `adapter_names` for mixed adapters.
- bare vLLM: `AsyncLLM`, every request at once, max_loras = 16.
- loramem: `loramem serve` with that engine, each adapter the active version of its own topic,
  requests POST /generate with `topic` and `mode: lora` (base: no topic).
Prints tokens/s of each, ratio lines (server vs bare, 16 vs 1 adapter, HF vs vLLM server), the
server's resident memory with 0, 1, 4 and 16 adapters loaded (published one by one while it runs)
and its peak. Writes bench/results/serving.json and serving.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    QUESTIONS,
    RESULTS,
    latency_summary,
    loramem,
    make_adapters,
    memory_gib,
    model_path,
    publish,
    ratio,
    save,
)

WORKLOADS = {"base": 0, "1 adapter": 1, "4 adapters": 4, "16 adapters": 16}


def adapter_of(request: int, count: int) -> int | None:
    return None if count == 0 else request % count


def bare_hf(model: Path, adapters: list[Path], args: Any, device: str = "cpu") -> dict[str, Any]:
    import torch
    from peft import PeftModel

    from loramem.core.base_model import load_causal_lm
    from loramem.core.prompting import question_ids

    base, tokenizer = load_causal_lm(model, device)
    tokenizer.padding_side = "left"
    questions = [QUESTIONS[n % len(QUESTIONS)] for n in range(args.requests)]
    prompts = [question_ids(tokenizer, q) for q in questions]
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(device)
    fixed = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": False}

    def run(model_: Any, **extra: Any) -> dict[str, Any]:
        with torch.inference_mode():
            model_.generate(**batch, **{**fixed, "max_new_tokens": 2, "min_new_tokens": 2}, **extra)
            started = time.perf_counter()
            model_.generate(**batch, **fixed, **extra)
            if device != "cpu":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
        # One batch: every request waits for the whole of it.
        return {"tokens_per_s": args.requests * args.tokens / elapsed, "p50_s": elapsed}

    results = {"base": run(base)}
    peft = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name="a0")
    for n, path in enumerate(adapters[1:], start=1):
        peft.load_adapter(str(path), adapter_name=f"a{n}")
    peft.eval()
    for name, count in WORKLOADS.items():
        if count:
            names = [f"a{adapter_of(n, count)}" for n in range(args.requests)]
            results[name] = run(peft, adapter_names=names)
    return results


async def bare_vllm(model: Path, adapters: list[Path], args: Any) -> dict[str, Any]:
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    from loramem.core.prompting import question_ids

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [question_ids(tokenizer, QUESTIONS[n % len(QUESTIONS)]) for n in range(args.requests)]
    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(
            model=str(model),
            dtype="float32",
            enable_lora=True,
            max_loras=16,
            max_lora_rank=8,
            max_model_len=2048,
            max_num_seqs=max(16, args.requests),
            seed=0,
            disable_log_stats=True,
        )
    )
    loras = [LoRARequest(f"a{n}", n + 1, str(path)) for n, path in enumerate(adapters)]

    async def one(n: int, count: int, tokens: int) -> float:
        index = adapter_of(n, count)
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        started = time.perf_counter()
        async for _ in engine.generate(
            TokensPrompt(prompt_token_ids=prompts[n]),
            params,
            f"{time.time()}-{n}",
            lora_request=None if index is None else loras[index],
        ):
            pass
        return time.perf_counter() - started

    results = {}
    try:
        for name, count in WORKLOADS.items():
            await asyncio.gather(*(one(n, count, 2) for n in range(args.requests)))
            started = time.perf_counter()
            latencies = await asyncio.gather(
                *(one(n, count, args.tokens) for n in range(args.requests))
            )
            elapsed = time.perf_counter() - started
            results[name] = {
                "tokens_per_s": args.requests * args.tokens / elapsed,
                **latency_summary(list(latencies)),
            }
    finally:
        engine.shutdown()
    return results


async def through_server(url: str, pid: int, args: Any) -> dict[str, Any]:
    async def one(http: httpx.AsyncClient, n: int, count: int, tokens: int) -> tuple[float, int]:
        index = adapter_of(n, count)
        body: dict[str, Any] = {
            "prompt": QUESTIONS[n % len(QUESTIONS)],
            "max_tokens": tokens,
            "ignore_eos": True,
            "mode": "base" if index is None else "lora",
        }
        if index is not None:
            body["topic"] = f"t{index}"
        started = time.perf_counter()
        response = await http.post(f"{url}/generate", json=body)
        response.raise_for_status()
        return time.perf_counter() - started, response.json()["usage"]["completion_tokens"]

    results = {}
    limits = httpx.Limits(max_connections=args.requests + 4)
    async with httpx.AsyncClient(timeout=900, limits=limits) as http:
        for name, count in WORKLOADS.items():
            await asyncio.gather(*(one(http, n, count, 2) for n in range(args.requests)))
            started = time.perf_counter()
            answers = await asyncio.gather(
                *(one(http, n, count, args.tokens) for n in range(args.requests))
            )
            elapsed = time.perf_counter() - started
            results[name] = {
                "tokens_per_s": sum(tokens for _, tokens in answers) / elapsed,
                **latency_summary([latency for latency, _ in answers]),
                **memory_gib(pid),
            }
    return results


def resident_memory(url: str, pid: int, data: Path, adapters: list[Path]) -> dict[int, float]:
    """The server's resident memory with 0, 1, 4 and 16 adapters loaded: each published as the
    version of its own topic, then waited for until the server serves it."""
    memory = {}
    published = 0
    for count in (0, 1, 4, 16):
        while published < count:
            publish(data, f"t{published}", adapters[published])
            published += 1
        deadline = time.monotonic() + 120
        while len(httpx.get(f"{url}/admin/engine").json()["active_modules"]) < count:
            assert time.monotonic() < deadline, f"{count} adapters were not loaded in 120 s"
            time.sleep(0.2)
        memory[count] = memory_gib(pid)["rss_gib"]
    return memory


def run(engine: str, model: Path, adapters: list[Path], work: Path, args: Any) -> dict[str, Any]:
    data = work / engine
    if engine == "hf":
        bare = bare_hf(model, adapters, args)
    else:
        bare = asyncio.run(bare_vllm(model, adapters, args))
    # The bare engines' limits: 16 adapters at once, rank 8 (vLLM pads every LoRA to its maximum
    # rank, so a larger bound costs the CPU kernels time).
    settings = {
        "max_resident_adapters": "16",
        "max_lora_rank": "8",
        "max_batch_size": str(max(16, args.requests)),
    }
    with loramem(data, engine, **settings) as (url, pid):
        memory = resident_memory(url, pid, data, adapters)
        served = asyncio.run(through_server(url, pid, args))
    for name in WORKLOADS:
        print(
            f"{engine:4} {name:12}: loramem {served[name]['tokens_per_s']:6.1f} tok/s "
            f"(p50 {served[name]['p50_s']:.2f} s, peak RSS {served[name]['peak_rss_gib']:.2f} GiB)"
            f"  bare {bare[name]['tokens_per_s']:6.1f} tok/s",
            flush=True,
        )
    resident = ", ".join(f"{n}: {gib:.2f}" for n, gib in memory.items())
    print(f"{engine:4} server RSS (GiB) by adapters resident: {resident}", flush=True)
    return {"bare": bare, "loramem": served, "rss_gib_by_resident_adapters": memory}


def plot(report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    names = list(WORKLOADS)
    width = 0.2
    bars = [(e, side) for e in report["engines"] for side in ("bare", "loramem")]
    for offset, (engine, side) in enumerate(bars):
        values = [report["engines"][engine][side][n]["tokens_per_s"] for n in names]
        positions = [i + (offset - (len(bars) - 1) / 2) * width for i in range(len(names))]
        axis.bar(positions, values, width, label=f"{engine} {side}")
    axis.set_xticks(range(len(names)), names)
    axis.set_ylabel("tokens/s")
    axis.set_title(f"{report['requests']} concurrent requests x {report['tokens']} tokens")
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "serving.png")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    report: dict[str, Any] = {"requests": args.requests, "tokens": args.tokens, "engines": {}}
    ratios = []
    model = model_path()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        adapters = make_adapters(model, work / "adapters", 16)
        for engine in args.engines.split(","):
            result = report["engines"][engine] = run(engine, model, adapters, work, args)
            served = {n: result["loramem"][n]["tokens_per_s"] for n in WORKLOADS}
            for name in WORKLOADS:
                bare = result["bare"][name]["tokens_per_s"]
                ratios.append(ratio(f"{engine} server/bare {name}", served[name], bare, ">= 0.9"))
            ratios.append(
                ratio(
                    f"{engine} server 16 adapters/1 adapter",
                    served["16 adapters"],
                    served["1 adapter"],
                    ">= 0.7",
                )
            )
            bare_16 = result["bare"]["16 adapters"]["tokens_per_s"]
            bare_1 = result["bare"]["1 adapter"]["tokens_per_s"]
            ratios.append(ratio(f"{engine} bare 16 adapters/1 adapter", bare_16, bare_1))
        if {"hf", "vllm"} <= set(report["engines"]):
            for name in WORKLOADS:
                ratios.append(
                    ratio(
                        f"server hf/vllm {name}",
                        report["engines"]["hf"]["loramem"][name]["tokens_per_s"],
                        report["engines"]["vllm"]["loramem"][name]["tokens_per_s"],
                        "> 1 (the default engine wins on CPU)",
                    )
                )
    report["ratios"] = ratios
    save("serving", report)
    plot(report)
    return report


if __name__ == "__main__":
    main()
