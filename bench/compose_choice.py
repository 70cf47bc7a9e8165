"""Which candidate a composition by confidence should keep where routing among modules misses:
every top-k candidate's answer and scores recorded once, then judged by several selection rules.

    .venv/bin/python -m bench.compose_choice [--articles cartographer,quillmark,...] [--top-k 3]

A real `loramem serve` memorizes the articles' paragraphs as the documents of one topic, one module
a paragraph (its module capacity holds the largest paragraph and no two), and routes each question
of bench/data/prose/questions.json among them: the `adapters` of a top-k request are the candidate
modules with their routing scores. Then, in this process, each candidate module's adapter (read
from the server's store) answers the question greedily with the server's prompt and decoding loop
(32 tokens at most), and the tokens of each answer are scored under that module and under the base
model. A rule keeps one candidate per question; the recall of what it keeps is printed beside top-1
routing, the module trained on the paragraph that holds the answer (the oracle, within the same
topic), and the share of questions any candidate answers right (the ceiling).

The rules: `mean of N` is the server's (the mean log-probability of the first
LORAMEM_CONFIDENT_TOKENS tokens; the server also counts the end-of-answer token of an answer
shorter than that, this bench does not); the others are alternatives measured against it.
Writes bench/results/compose_choice.json.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_CONFIDENT_TOKENS as DECIDING_TOKENS
from bench.common import MODEL_DIR, model_path, save
from bench.recall import (
    SPLIT_PROSE_TOPIC,
    Server,
    memorize_split_prose,
    paragraph_modules_setting,
    prose_paragraphs,
    questions_by_paragraph,
)
from loramem.trainer.matching import recalled
from tests.helpers import process_env, served

ANSWER_TOKENS = 32


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("-inf")


# A candidate: its routing score, its answer's token log-probabilities under its module and under
# the base model. Each rule gives the score a candidate is kept by (the highest).
Rule = Callable[[dict[str, Any]], float]
RULES: dict[str, Rule] = {
    "top-1 routing": lambda c: c["routing"],
    f"mean of {DECIDING_TOKENS}": lambda c: _mean(c["logprobs"][:DECIDING_TOKENS]),
    "mean of the whole answer": lambda c: _mean(c["logprobs"]),
    f"sum of {DECIDING_TOKENS} (the answer's likelihood)": lambda c: sum(
        c["logprobs"][:DECIDING_TOKENS]
    ),
    f"mean of {DECIDING_TOKENS} + routing score": lambda c: (
        _mean(c["logprobs"][:DECIDING_TOKENS]) + c["routing"]
    ),
    # The routing score as a softmax prior over modules (temperature 0.1) times the likelihood.
    f"sum of {DECIDING_TOKENS} + routing score / 0.1": lambda c: (
        sum(c["logprobs"][:DECIDING_TOKENS]) + c["routing"] / 0.1
    ),
    # The routing score again, of the question followed by the candidate's first tokens: a module
    # whose passages hold the answer it starts matches better than one that says something else.
    f"routing of the question + the first {DECIDING_TOKENS}": lambda c: c["answer_routing"],
    f"mean of {DECIDING_TOKENS} + that routing score": lambda c: (
        _mean(c["logprobs"][:DECIDING_TOKENS]) + c["answer_routing"]
    ),
    # What the first tokens add to the module's match.
    f"routing gained by the first {DECIDING_TOKENS}": lambda c: c["answer_routing"] - c["routing"],
    # How much more likely the module makes its answer than the base model does.
    f"mean of {DECIDING_TOKENS} against the base model": lambda c: _mean(
        [m - b for m, b in zip(c["logprobs"], c["base_logprobs"], strict=True)][:DECIDING_TOKENS]
    ),
}


def routed_questions(articles: list[str], top_k: int, work: Path) -> dict[str, Any]:
    """Trains the split topic in a served loramem whose data stays in `work`; each question with
    its candidate modules and their routing scores, and each module's adapter folder."""
    from sqlalchemy import select

    from loramem.core.registry.db import Database
    from loramem.core.registry.models import AdapterVersion, Module
    from loramem.serving.retrieval import KnowledgeIndex
    from loramem.serving.retrieval.refresh import load_passages
    from loramem.serving.retrieval.scorers import create_scorer

    paragraphs = prose_paragraphs(articles)
    data_dir = work / "data"
    env = process_env(
        data_dir=str(data_dir),
        model_dir=str(MODEL_DIR),
        engine="hf",
        module_tokens_per_rank=paragraph_modules_setting(paragraphs),
    )
    with served(env, work / "server.log") as (url, process):
        server = Server(url, process.pid)
        job, modules = memorize_split_prose(server, paragraphs)
        print(f"split topic: {len(paragraphs)} paragraphs trained in {job['seconds']:.0f} s")
        questions = []
        for question, accepted, paragraph in questions_by_paragraph(articles, paragraphs):
            routed = server.ask(question, SPLIT_PROSE_TOPIC, "lora", 1, top_k=top_k)["adapters"]
            questions.append(
                {
                    "question": question,
                    "accepted": accepted,
                    "own_module": modules[paragraph],
                    "candidates": sorted(
                        ({"module": a["module"], "routing": a["score"]} for a in routed),
                        key=lambda c: -c["routing"],
                    ),
                }
            )
    database = Database(f"sqlite:///{data_dir / 'loramem.db'}")
    with database.session() as session:
        folders = {
            number: str(data_dir / "adapters" / path)
            for number, path in session.execute(
                select(Module.number, AdapterVersion.path).join(
                    AdapterVersion,
                    (AdapterVersion.topic_id == Module.topic_id)
                    & (AdapterVersion.module == Module.number)
                    & (AdapterVersion.version == Module.active_version),
                )
            )
        }
    index = KnowledgeIndex(create_scorer("auto"))
    index.replace(load_passages(database))
    return {
        "questions": questions,
        "adapter_folders": folders,
        "train_seconds": job["seconds"],
        "index": index,
    }


def answer_with_each_module(routed: dict[str, Any]) -> None:
    """Adds to every candidate (and to the own module when routing left it out) its greedy
    answer, whether it is right, and its tokens' log-probabilities under the module and the
    base model."""
    import torch
    from peft import PeftModel

    from loramem.core.base_model import load_causal_lm
    from loramem.core.decoding import DecodeRow, SamplingParams, decode_batch
    from loramem.core.prompting import question_ids

    model, tokenizer = load_causal_lm(model_path())
    folders = routed["adapter_folders"]
    index = routed["index"]
    first, *rest = sorted(folders)
    peft = PeftModel.from_pretrained(model, folders[first], adapter_name=str(first))
    for module in rest:
        peft.load_adapter(folders[module], adapter_name=str(module))
    peft.eval()

    @torch.inference_mode()
    def token_logprobs(prompt: list[int], answer: list[int]) -> list[float]:
        if not answer:
            return []
        logits = peft(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
        picked = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(answer)[:, None])
        return [float(p) for p in picked[:, 0]]

    for asked in routed["questions"]:
        prompt = question_ids(tokenizer, asked["question"])
        candidates = asked["candidates"]
        if asked["own_module"] not in {c["module"] for c in candidates}:
            candidates = [*candidates, {"module": asked["own_module"], "routing": 0.0}]
        for candidate in candidates:
            peft.set_adapter(str(candidate["module"]))
            row = DecodeRow(prompt, SamplingParams(max_tokens=ANSWER_TOKENS))
            decode_batch(peft, tokenizer, [row])
            candidate["answer"] = row.text
            candidate["right"] = any(recalled(a, row.text) for a in asked["accepted"])
            candidate["logprobs"] = token_logprobs(prompt, row.generated)
            opening = tokenizer.decode(row.generated[:DECIDING_TOKENS], skip_special_tokens=True)
            with_answer = dict(
                index.rank_modules(f"{asked['question']} {opening}", SPLIT_PROSE_TOPIC)
            )
            candidate["answer_routing"] = with_answer.get(candidate["module"], 0.0)
            with peft.disable_adapter():
                candidate["base_logprobs"] = token_logprobs(prompt, row.generated)
            if candidate["module"] == asked["own_module"]:
                asked["own_module_right"] = candidate["right"]


def judged(questions: list[dict[str, Any]], top_k: int) -> dict[str, Any]:
    """Recall of each rule over the top 1..k candidates, the oracle's and the ceiling's."""

    def right(rule: Rule, k: int) -> int:
        return sum(max(q["candidates"][:k], key=rule)["right"] for q in questions)

    own = sum(q["own_module_right"] for q in questions)
    result: dict[str, Any] = {
        "questions": len(questions),
        "top-1": right(RULES["top-1 routing"], 1),
        "oracle (the paragraph's own module)": own,
        "ceiling (any candidate right)": {
            k: sum(any(c["right"] for c in q["candidates"][:k]) for q in questions)
            for k in range(2, top_k + 1)
        },
        "rules": {
            name: {k: right(rule, k) for k in range(2, top_k + 1)}
            for name, rule in RULES.items()
            if name != "top-1 routing"
        },
    }
    gap = own - result["top-1"]
    print(f"{len(questions)} questions: top-1 {result['top-1']}, oracle {own}")
    for name, by_k in result["rules"].items():
        recovered = ", ".join(
            f"top-{k} {hits}"
            + (f" ({(hits - result['top-1']) / gap:+.0%} of the gap)" if gap else "")
            for k, hits in by_k.items()
        )
        print(f"  {name}: {recovered}")
    print(f"  ceiling: {result['ceiling (any candidate right)']}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", default="cartographer,quillmark,lantern_festival,aster_bike")
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        routed = routed_questions(args.articles.split(","), args.top_k, Path(tmp))
        answer_with_each_module(routed)
    report = {
        "articles": args.articles.split(","),
        "train_seconds": routed["train_seconds"],
        **judged(routed["questions"], args.top_k),
        "answers": routed["questions"],
    }
    save("compose_choice", report)
    return report


if __name__ == "__main__":
    main()
