"""The vLLM engine against bare vLLM AsyncLLM, same model, prompts and settings, in one run.

    .venv/bin/python -m bench.vllm_engine [--requests 16] [--tokens 64]

Default model (SmolLM2-135M, converted under ./data unless LORAMEM_MODEL_DIR says otherwise),
4 rank-8 adapters with random weights, greedy decoding. For each workload (base only, one adapter,
4 distinct adapters, base mixed with adapters) it prints tokens/s of both and their ratio, then the
engine start time, peak memory (this process and vLLM's engine process) and the time from adding
a new adapter version to the first token generated from it. Writes bench/results/vllm_engine.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from server.base_model import resolve_base_model
from server.config import Settings
from server.engines import LoRAAdapter, SamplingParams
from server.engines.vllm import VLLMEngine
from server.prompting import question_ids

RESULTS = Path(__file__).parent / "results"
QUESTIONS = [
    "What is the capital of France?",
    "Name three colors of the rainbow.",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
]


def make_adapters(model_path: Path, folder: Path, count: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for n in range(count):
        torch.manual_seed(n)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        config = LoraConfig(r=8, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        path = folder / f"adapter{n}"
        peft_model.save_pretrained(path)
        (path / "README.md").unlink(missing_ok=True)
        paths.append(path)
    return paths


def peak_rss_gib() -> float:
    """Peak resident memory of this process plus its live children (vLLM's engine core)."""
    total = 0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total / 2**30


Workload = list[tuple[list[int], Any]]  # (prompt ids, adapter or None) per request


async def timed(run_one: Callable[[int, list[int], Any], Awaitable[int]], work: Workload) -> float:
    started = time.perf_counter()
    tokens = await asyncio.gather(*(run_one(n, p, a) for n, (p, a) in enumerate(work)))
    return sum(tokens) / (time.perf_counter() - started)


async def bare(
    model: Path, adapters: list[Path], workloads: dict[str, Workload], args: Any
) -> dict:
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    started = time.perf_counter()
    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(
            model=str(model),
            dtype="float32",
            enable_lora=True,
            max_loras=4,
            max_lora_rank=8,
            max_model_len=2048,
            max_num_seqs=args.requests,
            seed=0,
            disable_log_stats=True,
        )
    )
    result: dict[str, Any] = {"start_s": time.perf_counter() - started}
    requests = {path: LoRARequest(path.name, n + 1, str(path)) for n, path in enumerate(adapters)}
    params = VLLMSamplingParams(max_tokens=args.tokens, temperature=0.0)

    async def run_one(n: int, prompt: list[int], adapter: Path | None) -> int:
        lora = requests[adapter] if adapter else None
        async for output in engine.generate(
            TokensPrompt(prompt_token_ids=prompt),
            params,
            f"bare-{time.time()}-{n}",
            lora_request=lora,
        ):
            last = output
        return len(last.outputs[0].token_ids)

    for name, work in workloads.items():
        await timed(run_one, work[:2])  # warm-up (and loads the adapters it names)
        result[name] = await timed(run_one, work)
    result["peak_rss_gib"] = peak_rss_gib()
    engine.shutdown()
    return result


async def ours(
    model: Path, adapters: list[Path], workloads: dict[str, Workload], args: Any
) -> dict:
    started = time.perf_counter()
    engine = VLLMEngine(
        model, max_loras=4, max_lora_rank=8, max_model_len=2048, max_num_seqs=args.requests
    )
    await engine.start()
    result: dict[str, Any] = {"start_s": time.perf_counter() - started}
    loras = {path: LoRAAdapter(path.name, n + 1, path, 8) for n, path in enumerate(adapters)}
    params = SamplingParams(max_tokens=args.tokens)

    async def run_one(n: int, prompt: list[int], adapter: Path | None) -> int:
        async for output in engine.generate(
            f"ours-{time.time()}-{n}", prompt, params, loras[adapter] if adapter else None
        ):
            last = output
        return len(last.token_ids)

    for name, work in workloads.items():
        await timed(run_one, work[:2])
        result[name] = await timed(run_one, work)

    # A new version: time from add_adapter to the first token generated from it.
    fresh = LoRAAdapter("fresh", 99, adapters[0], 8)
    began = time.perf_counter()
    await engine.add_adapter(fresh)
    outputs = engine.generate("swap", workloads["base"][0][0], params, fresh)
    await anext(outputs)
    result["add_to_first_token_s"] = time.perf_counter() - began
    await outputs.aclose()  # aborts the rest of it
    result["peak_rss_gib"] = peak_rss_gib()
    await engine.shutdown()
    return result


async def main() -> None:
    # The same KV cache for both engines (loramem's engine sets this default too).
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    model = resolve_base_model(Settings())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [question_ids(tokenizer, QUESTIONS[n % len(QUESTIONS)]) for n in range(args.requests)]
    with tempfile.TemporaryDirectory() as folder:
        adapters = make_adapters(model, Path(folder), 4)
        workloads: dict[str, Workload] = {
            "base": [(p, None) for p in prompts],
            "one adapter": [(p, adapters[0]) for p in prompts],
            "4 adapters": [(p, adapters[n % 4]) for n, p in enumerate(prompts)],
            "mixed base + 4 adapters": [
                (p, None if n % 2 == 0 else adapters[n % 4]) for n, p in enumerate(prompts)
            ],
        }
        bare_result = await bare(model, adapters, workloads, args)
        ours_result = await ours(model, adapters, workloads, args)
    print(f"{args.requests} concurrent requests x {args.tokens} new tokens, greedy, tokens/s:")
    report: dict[str, Any] = {"bare": bare_result, "loramem": ours_result}
    for name in workloads:
        ratio = ours_result[name] / bare_result[name]
        report[f"ratio {name}"] = ratio
        print(
            f"  {name}: loramem {ours_result[name]:.1f}, bare AsyncLLM {bare_result[name]:.1f}, "
            f"ratio {ratio:.2f}"
        )
    print(
        f"  engine start: loramem {ours_result['start_s']:.1f}s, bare {bare_result['start_s']:.1f}s"
    )
    print(
        f"  peak RSS (this process + engine core, highest so far): "
        f"{bare_result['peak_rss_gib']:.2f} GiB with bare, "
        f"{ours_result['peak_rss_gib']:.2f} GiB with loramem's engine"
    )
    swap_ms = ours_result["add_to_first_token_s"] * 1000
    print(f"  new version: add_adapter to first token {swap_ms:.0f} ms")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vllm_engine.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
