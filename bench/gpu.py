"""For a machine with a GPU: the HF engine and the trainer on CUDA against bare transformers/PEFT
on the same GPU, in one run of a few minutes (vLLM's wheel is too large to carry to such a machine).

Here, once: write the default model's config and tokenizer (a few MB, small enough to travel):

    .venv/bin/python -m bench.gpu --prepare .gpu

There (python3 with torch, transformers, peft; pydantic and pydantic-settings carried as wheels):

    python3 -m bench.gpu --model .gpu --out $OUT/gpu.json

Without weights in the folder the model gets random ones of the same architecture: speed does
not depend on the values, and every generation has exactly `--tokens` tokens (ignore_eos). Prints
ratio lines and writes the figures to `--out`:
- serving: `--requests` concurrent requests through the HF engine (continuous batching, LoRA bank)
  against bare `generate` (PEFT `adapter_names` for mixed adapters): base, 1 and 16 adapters.
- training: the trainer's loop (`train_lora`) against a bare PEFT loop, tokens/s, on PhoneBook 1K.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import make_adapters, phonebook_qa, ratio


def prepare(folder: Path) -> None:
    from bench.common import model_path

    source = model_path()
    folder.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, folder / file.name)


def with_weights(folder: Path, work: Path) -> Path:
    """`folder` if it holds weights, else a copy with random weights of its architecture."""
    if any(folder.glob("*.safetensors")):
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    shutil.copytree(folder, work / "model")
    model.save_pretrained(work / "model")
    return work / "model"


async def engine_throughput(
    model: Path, adapters: list[Path], args: Any
) -> dict[str, dict[str, float]]:
    from loramem.core.prompting import question_ids
    from loramem.serving.engines import LoRAAdapter, SamplingParams
    from loramem.serving.engines.hf import HFEngine

    engine = HFEngine(
        model, max_batch_size=args.requests, max_resident_adapters=16, device=args.device
    )
    await engine.start()
    prompts = [
        question_ids(engine.tokenizer, f"Question number {n}?") for n in range(args.requests)
    ]
    loras = [LoRAAdapter(f"a{n}", n + 1, path, 8) for n, path in enumerate(adapters)]
    params = SamplingParams(max_tokens=args.tokens, ignore_eos=True)

    async def one(n: int, count: int, request_params: SamplingParams) -> None:
        adapter = loras[n % count] if count else None
        async for _ in engine.generate(
            f"{count}-{n}-{time.time()}", prompts[n], request_params, adapter
        ):
            pass

    results = {}
    try:
        for name, count in {"base": 0, "1 adapter": 1, "16 adapters": 16}.items():
            warm = SamplingParams(max_tokens=2, ignore_eos=True)
            await asyncio.gather(*(one(n, count, warm) for n in range(args.requests)))
            started = time.perf_counter()
            await asyncio.gather(*(one(n, count, params) for n in range(args.requests)))
            results[name] = {
                "tokens_per_s": args.requests * args.tokens / (time.perf_counter() - started)
            }
    finally:
        await engine.shutdown()
    return results


def trainer_throughput(model: Path, args: Any) -> dict[str, Any]:
    import torch

    from loramem.core.base_model import load_causal_lm
    from loramem.core.options import TrainingOptions
    from loramem.trainer.lora_trainer import train_lora
    from loramem.trainer.training_data import Knowledge, build_training_set

    qa = phonebook_qa("1K")
    base, tokenizer = load_causal_lm(model, args.device)
    data = build_training_set(
        tokenizer, [Knowledge(question=p["question"], answer=p["answer"]) for p in qa]
    )
    options = TrainingOptions(steps=args.steps, stop_when_learned=False)
    started = time.perf_counter()
    train_lora(base, tokenizer.pad_token_id, data.examples, options)
    if args.device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = args.steps * options.batch_size * data.tokens / len(data.examples)
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "tokens": tokens}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", type=Path, help="write config and tokenizer here, and stop")
    parser.add_argument("--model", type=Path, help="a model folder (weights optional)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.prepare)
        return {}
    from bench.serving import bare_hf
    from bench.training import BATCH, bare_loop

    report: dict[str, Any] = {"device": args.device, "requests": args.requests}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = with_weights(args.model, work)
        adapters = make_adapters(model, work / "adapters", 16)
        served = asyncio.run(engine_throughput(model, adapters, args))
        bare = bare_hf(model, adapters, args, device=args.device)
        ratios = [
            ratio(
                f"gpu engine/bare {name}", served[name]["tokens_per_s"], bare[name]["tokens_per_s"]
            )
            for name in served
        ]
        ratios.append(
            ratio(
                "gpu engine 16 adapters/1 adapter",
                served["16 adapters"]["tokens_per_s"],
                served["1 adapter"]["tokens_per_s"],
                ">= 0.7",
            )
        )
        trainer = trainer_throughput(model, args)
        naive = bare_loop(
            phonebook_qa("1K"), args.steps, answer_only=True, model_dir=model, device=args.device
        )
        naive["tokens_per_s"] = trainer["tokens"] / naive["seconds"]
        ratios.append(
            ratio(
                "gpu trainer/bare PEFT tokens/s",
                trainer["tokens_per_s"],
                naive["tokens_per_s"],
                ">= 0.95",
            )
        )
    report.update(
        serving={"engine": served, "bare": bare},
        training={"trainer": trainer, "bare": naive, "batch": BATCH},
        ratios=ratios,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
