"""One training step's time and peak memory: the trainer's compute plans against PEFT's plain step
(fp32, full-vocabulary logits at every position), each in a fresh process, on the default model.

    .venv/bin/python -m bench.train_step [--rows 8] [--width 300] [--answer 12 | --text]
                                          [--only bf16]

The batch is `--rows` examples of `--width` tokens (random ids): with `--answer N` only the last N
tokens of each are labelled (a QA example with a long prompt, as a context-aware question is);
with `--text` every token is (a text chunk). Each configuration runs 4 steps; the time is the best
of the last 3, the memory the process's VmHWM after them (the model included). The plans: the
worker's own under the default bound (in bf16: autocast over the default fp32 base weights cast
once for the training, as the trainer does, or at every use, as autocast alone does, and over
bf16 weights, `LORAMEM_WEIGHTS_PRECISION=bf16`), and micro-batches of one example
with no, half or every decoder layer checkpointed, which is what the bound trades between;
with LoRA dropout 0.1 (texts')
and without (QA pairs alone); the worker's plan stepped in a thread of its own, as the embedded
trainer's job is, while another thread that computed (the HF engine's) is alive and after it ended;
and the worker's plan on questions asked with their passage in the prompt, as augment "mix" writes
them (a 60-word passage of `PASSAGE_TOKENS`, a 20-token question, an 8-token answer), 4 questions
a passage against each its own passage: the same tokens, computed as rows that share the passage
or one example a row (`SHARED`, whatever the shape flags say). The plans use the trainer's LoRA
dropout (`loramem/trainer/dropout.py`) but one, `TORCH_DROPOUT`, the default bf16 plan with
torch's: the ratio of the two is printed.
Writes bench/results/train_step.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import in_fresh_process, ratio, report_to_parent, save
from loramem.core.options import TEXT_DROPOUT

# bf16 computed from bf16 base weights (LORAMEM_WEIGHTS_PRECISION=bf16) instead of fp32 ones.
BF16_WEIGHTS = "bf16 weights"
# bf16 autocast casting each frozen weight at every use, as the trainer did before it cast them
# once for the whole training.
CAST_AT_EVERY_USE = "bf16 cast at every use"
# The trainer's default bf16 plan, and the same with torch's LoRA dropout instead of the trainer's.
TRAINERS_PLAN = "bf16, labelled logits, default bound"
TORCH_DROPOUT = "bf16, labelled logits, default bound, torch's LoRA dropout"
# name -> (precision, micro-batch tokens or None for the worker's plan under the default bound,
# the share of decoder layers checkpointed where the micro-batch is given, LoRA dropout)
PLANS: dict[str, tuple[str, int | None, float, float]] = {
    "fp32, labelled logits, default bound": ("fp32", None, 0, TEXT_DROPOUT),
    "fp32, labelled logits, default bound, no LoRA dropout (QA alone)": ("fp32", None, 0, 0),
    TRAINERS_PLAN: ("bf16", None, 0, TEXT_DROPOUT),
    "bf16, weights cast at every use, labelled logits, default bound": (
        CAST_AT_EVERY_USE,
        None,
        0,
        TEXT_DROPOUT,
    ),
    "bf16 over bf16 weights, labelled logits, default bound": (
        BF16_WEIGHTS,
        None,
        0,
        TEXT_DROPOUT,
    ),
    "bf16, labelled logits, default bound, no LoRA dropout (QA alone)": ("bf16", None, 0, 0),
    TORCH_DROPOUT: ("bf16", None, 0, TEXT_DROPOUT),
    "fp32, one example a micro-batch": ("fp32", 1, 0, TEXT_DROPOUT),
    "fp32, one example a micro-batch, half the layers checkpointed": ("fp32", 1, 0.5, TEXT_DROPOUT),
    "fp32, one example a micro-batch, every layer checkpointed": ("fp32", 1, 1, TEXT_DROPOUT),
    "fp32, one micro-batch, every layer checkpointed": ("fp32", 1 << 30, 1, TEXT_DROPOUT),
    "bf16, one example a micro-batch": ("bf16", 1, 0, TEXT_DROPOUT),
    "bf16, one example a micro-batch, every layer checkpointed": ("bf16", 1, 1, TEXT_DROPOUT),
}
BARE = "bare PEFT step (fp32, full logits, LoRA dropout 0.1)"
# The worker's own plan again, stepped in a thread of its own while another thread that computed
# (as the HF engine's loop does) is still alive, or after it ended (core/compute_threads).
IN_THREAD = {
    "the worker's plan in a thread, beside a live thread that computed": True,
    "the worker's plan in a thread, after that thread ended": False,
}

# The worker's plan on questions with their passage: name -> questions per passage.
SHARED = {
    "the worker's plan, each question its own passage": 1,
    "the worker's plan, 4 questions a passage (rows share it)": 4,
}
PASSAGE_TOKENS, QUESTION_TOKENS, ANSWER_TOKENS = 90, 20, 8


def _examples(rows: int, width: int, answer: int | None, sharing: int | None) -> list[Any]:
    """Random ids: `rows` examples of `width` tokens, or with `sharing`, questions after a
    passage that `sharing` of them have in common."""
    import torch

    from loramem.trainer.batching import IGNORE_INDEX, TrainingExample

    generator = torch.Generator().manual_seed(0)

    def tokens(count: int) -> list[int]:
        return torch.randint(100, 40_000, (count,), generator=generator).tolist()

    if sharing is None:
        examples = []
        for _ in range(rows):
            ids = tokens(width)
            labels = [IGNORE_INDEX] * (width - answer) + ids[-answer:] if answer else list(ids)
            examples.append(TrainingExample(ids, labels))
        return examples
    passages = [tokens(PASSAGE_TOKENS) for _ in range(-(-rows // sharing))]
    examples = []
    for row in range(rows):
        prompt = passages[row // sharing] + tokens(QUESTION_TOKENS)
        ids = prompt + tokens(ANSWER_TOKENS)
        examples.append(TrainingExample(ids, [IGNORE_INDEX] * len(prompt) + ids[len(prompt) :]))
    return examples


def _one(name: str, rows: int, width: int, answer: int | None) -> dict[str, Any]:
    import threading

    import torch
    from peft import get_peft_model

    from bench.common import model_path
    from loramem.core.base_model import load_causal_lm, training_precision
    from loramem.core.options import TrainingOptions
    from loramem.core.settings import Settings
    from loramem.trainer.batching import collate
    from loramem.trainer.dropout import use_byte_mask_dropout
    from loramem.trainer.lora_trainer import (
        ComputePlan,
        _Steps,
        cast_once,
        checkpointing,
        lora_config,
        plan_compute,
    )

    if name in IN_THREAD or name in SHARED:
        precision = training_precision(Settings())
    else:
        precision = PLANS[name][0] if name in PLANS else "fp32"
    model, tokenizer = load_causal_lm(
        model_path(), precision="bf16" if precision == BF16_WEIGHTS else "fp32"
    )
    generator = torch.Generator().manual_seed(0)
    examples = _examples(rows, width, answer, SHARED.get(name))
    width = max(len(example.input_ids) for example in examples)
    dropout = PLANS[name][3] if name in PLANS else TEXT_DROPOUT
    peft_model = get_peft_model(model, lora_config(TrainingOptions(dropout=dropout)))
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad])
    layers_checkpointed = 0
    cast = None
    if name == BARE:

        def step() -> None:
            batch = collate(examples, tokenizer.pad_token_id, peft_model.device)
            peft_model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.backward()

    else:
        tokens, share = PLANS[name][1:3] if name in PLANS else (None, 0.0)
        autocast = (
            torch.bfloat16 if precision in ("bf16", BF16_WEIGHTS, CAST_AT_EVERY_USE) else None
        )
        # The trainer casts the frozen weights once for the training (cast_once).
        cast = autocast if precision == "bf16" else None
        plan = (
            ComputePlan(autocast, tokens, round(share * model.config.num_hidden_layers))
            if tokens is not None
            else plan_compute(
                model.config, width, int(Settings().train_memory_gb * 2**30), autocast
            )
        )
        layers_checkpointed = plan.checkpointed_layers
        if name != TORCH_DROPOUT:
            use_byte_mask_dropout(peft_model)
        steps = _Steps(peft_model, examples, tokenizer.pad_token_id, plan)

        def step() -> None:
            steps.run(list(range(rows)), backward=True)

    seconds = []

    def four_steps() -> None:
        with checkpointing(peft_model, layers_checkpointed), cast_once(peft_model, cast):
            for _ in range(4):
                started = time.perf_counter()
                step()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                seconds.append(time.perf_counter() - started)

    if name in IN_THREAD:
        done = threading.Event()

        def compute_then_wait(keep_alive: bool) -> None:
            with torch.no_grad():
                model(torch.randint(100, 40_000, (4, 64), generator=generator))
            if keep_alive:
                done.wait()

        other = threading.Thread(target=compute_then_wait, args=(IN_THREAD[name],))
        other.start()
        if not IN_THREAD[name]:
            other.join()
        stepping = threading.Thread(target=four_steps)
        stepping.start()
        stepping.join()
        done.set()
        other.join()
    else:
        four_steps()
    return {"step_seconds": min(seconds[1:]), "layers_checkpointed": layers_checkpointed}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--width", type=int, default=300)
    parser.add_argument("--answer", type=int, default=12)
    parser.add_argument("--text", action="store_true", help="every token labelled")
    parser.add_argument("--only", help="the plans whose name holds this, beside the bare step")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from loramem.core.base_model import bf16_supported

    answer = None if args.text else args.answer
    if args.one:
        result = _one(args.one, args.rows, args.width, answer)
        report_to_parent(result)
        return result
    shape = ["--rows", str(args.rows), "--width", str(args.width)]
    shape += ["--text"] if args.text else ["--answer", str(args.answer)]
    # Without bf16 instructions the CPU emulates it about 30x slower than fp32: no worker picks it.
    plans = [name for name in PLANS if PLANS[name][0] == "fp32" or bf16_supported("cpu")]
    plans = [name for name in plans if args.only is None or args.only in name]
    results: dict[str, Any] = {}
    others = [] if args.only else [*IN_THREAD, *SHARED]
    for name in [BARE, *plans, *others]:
        results[name] = in_fresh_process("bench.train_step", "--one", name, *shape)
        figures = results[name]
        print(
            f"  {name}: {figures['step_seconds']:.2f} s a step, peak {figures['peak_gib']:.2f} GiB",
            flush=True,
        )
    bare = results[BARE]
    ratios = []
    for name in plans:
        ratios.append(
            ratio(f"step time {name}/bare", results[name]["step_seconds"], bare["step_seconds"])
        )
        ratios.append(
            ratio(f"peak memory {name}/bare", results[name]["peak_gib"], bare["peak_gib"])
        )
    if TRAINERS_PLAN in results and TORCH_DROPOUT in results:
        for figure, unit in (("step_seconds", "step time"), ("peak_gib", "peak memory")):
            ratios.append(
                ratio(
                    f"{unit}, the trainer's LoRA dropout/torch's",
                    results[TRAINERS_PLAN][figure],
                    results[TORCH_DROPOUT][figure],
                )
            )
    if others:
        beside, after = (results[name]["step_seconds"] for name in IN_THREAD)
        ratios.append(
            ratio("step time in a thread, beside a live thread that computed/after", beside, after)
        )
        apart, shared = (results[name]["step_seconds"] for name in SHARED)
        ratios.append(ratio("step time, questions sharing their passage/apart", shared, apart))
    report = {"shape": shape, "results": results, "ratios": ratios}
    save("train_step", report)
    return report


if __name__ == "__main__":
    main()
