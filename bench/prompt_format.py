"""The prompt format: the chat template's default system turn against short fixed ones, on what
the model reads and on what it learns, with the default model, in one run.

    .venv/bin/python -m bench.prompt_format [--only reading,training] [--variants template,empty]

Each variant is a value of `loramem.core.prompting.SYSTEM_PROMPT`: `template` (the chat
template's own default: SmolLM2's names the model and its maker), `empty` (an empty system turn),
`short` (one short instruction).

- reading: every question about the articles of the prose benchmark (bench/data/prose, texts of
  at most 600 words) asked greedy with its whole text in the prompt, as rag, hybrid and the
  trainer's round-trip check ask; the share whose reply holds an accepted answer, and the mean
  prompt length.
- training: the walk-through's four facts and PhoneBook 1K memorized by a real worker in a fresh
  process per variant, with the defaults: the job's recall, steps, training seconds and peak
  memory, and the mean tokens of a training example.
Writes bench/results/prompt_format.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    PROSE,
    add_paper_data_flag,
    in_fresh_process,
    model_path,
    phonebook_qa,
    ratio,
    report_to_parent,
    save,
    use_paper_data_flag,
)

ARTICLE_WORDS = 600
VARIANTS: dict[str, str | None] = {
    "template": None,
    "empty": "",
    "short": "Answer in a few words.",
}


def use_variant(name: str) -> None:
    from loramem.core import prompting

    prompting.SYSTEM_PROMPT = VARIANTS[name]


def reading(variant: str, batch_size: int = 8) -> dict[str, Any]:
    """Greedy replies to the prose questions with their text in the prompt."""
    from loramem.core.base_model import load_causal_lm
    from loramem.core.prompting import context_block, question_ids, with_context
    from loramem.trainer.matching import recalled
    from loramem.trainer.recall import greedy_replies

    use_variant(variant)
    model, tokenizer = load_causal_lm(model_path())
    questions = json.loads((PROSE / "questions.json").read_text())
    requests, accepted = [], []
    for name, asked in sorted(questions.items()):
        text = (PROSE / f"{name}.txt").read_text()
        if len(text.split()) > ARTICLE_WORDS:
            continue  # rag reads a few passages of a long document, not all of it
        for question, answers in asked:
            prompt = with_context(context_block([text]), question)
            requests.append((question_ids(tokenizer, prompt), 32))
            accepted.append(answers)
    replies = greedy_replies(model, tokenizer, requests, batch_size)
    hits = sum(
        any(recalled(a, reply) for a in answers)
        for answers, reply in zip(accepted, replies, strict=True)
    )
    return {
        "questions": len(requests),
        "accuracy": hits / len(requests),
        "mean_prompt_tokens": sum(len(ids) for ids, _ in requests) / len(requests),
    }


def job(variant: str, knowledge: dict[str, Any]) -> dict[str, Any]:
    """One job with the defaults in a fresh process that uses `variant`."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as spec:
        json.dump(knowledge, spec)
        spec.flush()
        return in_fresh_process(
            "bench.prompt_format", "--run-job", spec.name, "--variants", variant
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.training import FOUR_FACTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="reading,training")
    parser.add_argument("--variants", default="template,empty,short")
    parser.add_argument("--entries", type=int, default=48, help="PhoneBook 1K entries used")
    parser.add_argument("--run-job", type=Path, help=argparse.SUPPRESS)
    add_paper_data_flag(parser)
    args = parser.parse_args(argv)
    use_paper_data_flag(args)
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
    if args.run_job:
        from bench.training import mean_example_tokens, trainer

        use_variant(variants[0])
        knowledge = json.loads(args.run_job.read_text())
        result = {**trainer(knowledge), "mean_example_tokens": mean_example_tokens(knowledge["qa"])}
        report_to_parent(result)
        return result
    only = set(args.only.split(","))
    report: dict[str, Any] = {"variants": {v: VARIANTS[v] for v in variants}}
    if "reading" in only:
        report["reading"] = {}
        for variant in variants:
            result = reading(variant)
            report["reading"][variant] = result
            print(
                f"  reading, {variant}: {result['accuracy']:.1%} of {result['questions']} "
                f"questions, prompts of {result['mean_prompt_tokens']:.0f} tokens",
                flush=True,
            )
    if "training" in only:
        workloads = {
            "four facts": {"qa": FOUR_FACTS},
            f"PhoneBook 1K ({args.entries} entries)": {"qa": phonebook_qa("1K")[: args.entries]},
        }
        report["training"] = {}
        for name, knowledge in workloads.items():
            runs = {}
            for variant in variants:
                runs[variant] = result = job(variant, knowledge)
                print(
                    f"  {name}, {variant}: recall {result['recall']:.2f}, {result['steps']} "
                    f"steps, {result['seconds']:.0f} s of training (job "
                    f"{result['job_seconds']:.0f} s), examples of "
                    f"{result['mean_example_tokens']:.1f} tokens, "
                    f"peak {result['peak_gib']:.2f} GiB",
                    flush=True,
                )
            report["training"][name] = runs
            if "template" in runs:
                for variant in variants:
                    if variant != "template":
                        ratio(
                            f"{name} training time {variant}/template",
                            runs[variant]["seconds"],
                            runs["template"]["seconds"],
                            "< 1, with recall not lower",
                        )
    save("prompt_format", report)
    return report


if __name__ == "__main__":
    main()
