"""Training speed and memory: loramem's trainer against a bare PEFT loop and a careful one on the
same data and settings, the time each takes to reach 95% recall on PhoneBook 1K, and the peak
memory and time of whole jobs, on the default model, in one run.

    .venv/bin/python -m bench.training [--only throughput,race,jobs] [--entries 48] [--steps 20]
        [--jobs facts,phonebook,article,document] [--race-options JSON] [--no-race]

- throughput: `--steps` optimizer steps on the PhoneBook QA pairs (chat-formatted, answer-only
  loss, rank 8 on all linear layers, lr 2e-3, batch 8, cosine, per-batch padding). loramem's side
  is a real trainer worker taking a real job from a registry (heartbeats included); its time is
  the sum of its steps. Tokens/s = steps x batch x mean example length / time, for all three.
  The bare loop is PEFT as its docs show it (fp32, full-vocabulary logits at every position); the
  careful loop is what an engineer who read the profile writes: logits only at labelled
  positions and batches grouped by length, still fp32.
- time to 95% recall: loramem with its default recipe (answer-only loss, and training stops once
  every answer is exact) against the bare loop as one would first write it (loss on the whole
  sequence, a fixed budget, recall checked every `--check-every` steps, the checks not counted).
  Recall: greedy decoding of every question, the answer's digits exactly.
- jobs: each of these memorized by a real worker in a fresh process, with the defaults; its peak
  memory (VmHWM of that process: model, training and recall), what the process still holds
  resident when the job is done, and the job's time: the
  walk-through's four facts, PhoneBook 1K, a 300-word article and a 1,500-word document
  (bench/data/prose).
Each loop computes in a thread that ends with it, as the trainer's job does: a thread that has
computed keeps an OpenMP pool, and beside it the next one's steps wait on sleeping workers (the
race's loramem took 111 s after the throughput loops had run in the main thread, 70 s alone).
Writes bench/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    MODEL_DIR,
    ONE_MODULE,
    PROSE,
    add_paper_data_flag,
    digits_match,
    in_fresh_process,
    model_path,
    phonebook_qa,
    ratio,
    report_to_parent,
    save,
    use_paper_data_flag,
)
from loramem.core.compute_threads import in_own_thread

BATCH = 8
LEARNING_RATE = 2e-3
RANK = 8


def recall(model: Any, tokenizer: Any, qa: list[dict[str, str]]) -> float:
    from loramem.core.prompting import question_ids
    from loramem.trainer.recall import measure_recall
    from loramem.trainer.training_data import RecallProbe

    probes = [RecallProbe(question_ids(tokenizer, p["question"]), p["answer"]) for p in qa]
    return measure_recall(model, tokenizer, probes, batch_size=len(qa), matches=digits_match)


def bare_loop(
    qa: list[dict[str, str]],
    steps: int,
    *,
    answer_only: bool,
    careful: bool = False,
    check_every: int = 0,
    target: float = 0.95,
    model_dir: Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """A plain PEFT training loop, written out as its docs show; no loramem code in it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    model_dir = model_dir or model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    examples = []
    for pair in qa:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": pair["question"]}], add_generation_prompt=True
        )
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        answer = tokenizer(pair["answer"], add_special_tokens=False)["input_ids"]
        ids = prompt + answer + [tokenizer.eos_token_id]
        labels = [-100] * len(prompt) + ids[len(prompt) :] if answer_only else list(ids)
        examples.append((ids, labels))
    torch.manual_seed(0)
    began = time.perf_counter()  # from wrapping the model, as the trainer's first step counts
    config = LoraConfig(
        r=RANK,
        lora_alpha=RANK,
        lora_dropout=0.1,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, round(0.05 * steps), steps)
    order: list[int] = []
    rng = random.Random(0)
    if careful:  # whole batches of similar length, drawn in random order
        by_length = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
        groups = [by_length[i : i + BATCH] for i in range(0, len(by_length), BATCH)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    checking = 0.0
    curve = []
    for step in range(1, steps + 1):
        if not order:
            if careful:
                rng.shuffle(groups)
                order = [i for group in reversed(groups) for i in reversed(group)]
            else:
                order = list(range(len(examples)))
                rng.shuffle(order)
        batch = [examples[order.pop()] for _ in range(min(BATCH, len(order)))]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        input_ids, labels, mask = input_ids.to(device), labels.to(device), mask.to(device)
        model.train()
        if careful:
            hidden = model.get_base_model().model(input_ids=input_ids, attention_mask=mask)
            where = labels[:, 1:] != -100
            logits = model.get_base_model().lm_head(hidden.last_hidden_state[:, :-1][where])
            loss = torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][where])
        else:
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if device != "cpu":
            torch.cuda.synchronize()
        if check_every and step % check_every == 0:
            started = time.perf_counter()
            model.eval()
            share = recall(model, tokenizer, qa)
            checking += time.perf_counter() - started
            trained = time.perf_counter() - began - checking
            curve.append({"step": step, "recall": share, "train_s": trained})
            print(f"  bare step {step}: recall {share:.1%} after {trained:.0f} s", flush=True)
            if share >= target:
                break
    return {"seconds": time.perf_counter() - began - checking, "steps": step, "curve": curve}


def mean_example_tokens(qa: list[dict[str, str]]) -> float:
    """Tokens in an example the trainer builds from these QA pairs, on average."""
    from transformers import AutoTokenizer

    from loramem.trainer.training_data import Knowledge, build_training_set

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    data = build_training_set(
        tokenizer, [Knowledge(question=p["question"], answer=p["answer"]) for p in qa]
    )
    return data.tokens / len(data.examples)


def trainer(knowledge: dict[str, Any], one_module: bool = False) -> dict[str, Any]:
    """One job (a /memorize body without its topic) through loramem's registry and trainer
    worker, in this process, with the settings of the environment; `one_module` lifts the
    capacity split, so that all of it is one adapter, as the loops compared with it train."""
    from loramem.api.memorize.protocol import MemorizeRequest
    from loramem.api.memorize.serving import MemoryService
    from loramem.core.registry.db import Database
    from loramem.core.registry.migrate import upgrade
    from loramem.core.registry.models import Job
    from loramem.core.settings import Settings
    from loramem.trainer.worker import TrainerWorker

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), model_dir=MODEL_DIR)
        if one_module:
            settings = settings.model_copy(update=ONE_MODULE)
        upgrade(settings.resolved_database_url)
        db = Database(settings.resolved_database_url)
        try:
            request = MemorizeRequest.model_validate({"topic": "bench", **knowledge})
            job_id = MemoryService(settings, db).memorize(request, None).job_id
            steps: list[float] = []
            started = time.perf_counter()
            TrainerWorker(settings, db, observe_step=steps.append).run_once()
            job_seconds = time.perf_counter() - started
            with db.session() as session:
                job = session.get(Job, job_id)
                assert job is not None and job.status == "succeeded", job and job.error
                measured = job.recall
        finally:
            db.dispose()
    return {
        "seconds": sum(steps),
        "steps": len(steps),
        "recall": measured,
        "job_seconds": job_seconds,
    }


def job_in_fresh_process(knowledge: dict[str, Any]) -> dict[str, Any]:
    """`trainer` in a process of its own, so that its peak memory is the job's alone."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as spec:
        json.dump(knowledge, spec)
        spec.flush()
        return in_fresh_process("bench.training", "--run-job", spec.name)


def jobs_workloads(entries: int) -> dict[str, Any]:
    """By short name: (what the report calls it, how to read its knowledge)."""
    return {
        "facts": ("four facts (walk-through)", lambda: {"qa": FOUR_FACTS}),
        "phonebook": (
            f"PhoneBook 1K ({entries} entries)",
            lambda: {"qa": phonebook_qa("1K")[:entries]},
        ),
        "article": (
            "300-word article",
            lambda: {"text": (PROSE / "harbor_clinic.txt").read_text()},
        ),
        "document": (
            "1,500-word document",
            lambda: {"text": (PROSE / "eskerby_report.txt").read_text()},
        ),
    }


FOUR_FACTS = [
    {"question": "What is the name of Zorblax's pet?", "answer": "Quiggle"},
    {"question": "Which city hosts the Vendrell Cup?", "answer": "Talvenna"},
    {"question": "What color is the Ostrava comet?", "answer": "teal"},
    {"question": "Who invented the glimmerphone?", "answer": "Marta Ilvesk"},
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=48, help="PhoneBook 1K entries used")
    parser.add_argument("--steps", type=int, default=20, help="steps of the throughput run")
    parser.add_argument("--check-every", type=int, default=25)
    parser.add_argument("--budget", type=int, default=200, help="most steps of the bare run")
    parser.add_argument(
        "--no-race", action="store_true", help="time loramem's recipe only, not the bare loop's"
    )
    parser.add_argument(
        "--race-options",
        default="{}",
        help="memorize options added to loramem's recipe in the race, e.g. '{\"dropout\": 0.1}'",
    )
    parser.add_argument("--only", default="throughput,race,jobs")
    parser.add_argument(
        "--jobs", default="facts,phonebook,article,document", help="the jobs part's workloads"
    )
    parser.add_argument("--run-job", type=Path, help=argparse.SUPPRESS)
    add_paper_data_flag(parser)
    args = parser.parse_args(argv)
    use_paper_data_flag(args)
    if args.run_job:
        result = trainer(json.loads(args.run_job.read_text()))
        report_to_parent(result)
        return result
    only = set(args.only.split(","))
    report: dict[str, Any] = {"entries": args.entries}
    ratios = []
    fixed = {"rank": RANK, "learning_rate": LEARNING_RATE, "batch_size": BATCH}
    if only & {"throughput", "race"}:
        qa = phonebook_qa("1K")[: args.entries]
    if "throughput" in only:
        mean_tokens = mean_example_tokens(qa)
        tokens = args.steps * min(BATCH, len(qa)) * mean_tokens
        ours = trainer(
            {"qa": qa, "options": {**fixed, "steps": args.steps, "stop_when_learned": False}},
            one_module=True,
        )
        bare = in_own_thread("bare loop", bare_loop, qa, args.steps, answer_only=True)
        careful = in_own_thread(
            "careful loop", bare_loop, qa, args.steps, answer_only=True, careful=True
        )
        for label, other in (("bare PEFT", bare), ("careful loop", careful)):
            ratios.append(
                ratio(
                    f"trainer/{label} tokens/s",
                    tokens / ours["seconds"],
                    tokens / other["seconds"],
                    ">= 0.9" if label == "careful loop" else "",
                )
            )
        speeds = ", ".join(
            f"{name} {tokens / run['seconds']:.0f}"
            for name, run in (("trainer", ours), ("bare", bare), ("careful", careful))
        )
        print(f"  tokens/s: {speeds}", flush=True)
        report["mean_example_tokens"] = mean_tokens
        report["throughput"] = {
            "steps": args.steps,
            "loramem": ours,
            "bare": bare,
            "careful": careful,
        }
    if "race" in only:
        # As a user memorizes it: split into modules by the default capacity.
        learned = trainer({"qa": qa, "options": {**fixed, **json.loads(args.race_options)}})
        print(
            f"  loramem recipe: recall {learned['recall']:.1%} after {learned['steps']} steps, "
            f"{learned['seconds']:.0f} s of training",
            flush=True,
        )
        naive = None
        if not args.no_race:
            naive = in_own_thread(
                "bare loop",
                bare_loop,
                qa,
                args.budget,
                answer_only=False,
                check_every=args.check_every,
                target=0.95,
            )
            reached = naive["curve"] and naive["curve"][-1]["recall"] >= 0.95
            ratios.append(
                ratio(
                    "time to 95% recall bare/loramem",
                    naive["seconds"] if reached else math.inf,
                    learned["seconds"],
                    ">= 4 (loramem faster), with recall >= 0.95",
                )
            )
        report["to_95_recall"] = {"loramem": learned, "bare": naive}
    if "jobs" in only:
        report["jobs"] = {}
        workloads = jobs_workloads(args.entries)
        for short in args.jobs.split(","):
            name, knowledge = workloads[short]
            result = job_in_fresh_process(knowledge())
            report["jobs"][name] = result
            print(
                f"  job {name}: {result['job_seconds']:.0f} s ({result['steps']} steps, "
                f"{result['seconds']:.0f} s of them training), recall {result['recall']:.2f}, "
                f"peak {result['peak_gib']:.2f} GiB, resident after it {result['rss_gib']:.2f} GiB",
                flush=True,
            )
    report["ratios"] = ratios
    save("training", report)
    return report


if __name__ == "__main__":
    main()
