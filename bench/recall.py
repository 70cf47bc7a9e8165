"""What the memory recalls, through the HTTP API of a real `loramem serve` on the default model:
the paper's experiments at this project's scale.

    .venv/bin/python -m bench.recall [--only phonebook,modes,routing,counterfact]
                                     [--loads 1K,2K,4K,8K] [--ranks 4,8,16,32]

- phonebook: PhoneBook (../shared/data/paper) at each knowledge load and rank, trained with the
  default recipe; recall = greedy exact match on the answer's digits, and the time to train.
- modes: made-up facts given as plain text, asked in other words than the text uses, answered by
  the base model, rag, lora and hybrid, with augmentation ("mix") and without ("none").
- routing: the same questions with `topic: "auto"` among the topics memorized: how often the
  router picks the topic that holds the fact (and how often it stays away from unrelated ones).
- counterfact: counterfactual statements memorized as text; share of completions that give the
  new object rather than what the base model believes.

Writes bench/results/recall.json and recall_*.png. The full grid takes hours on 2 CPU cores;
`--loads 1K --ranks 8` takes a few minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import MODEL_DIR, PAPER, RESULTS, digits_match, phonebook_qa, save
from tests.helpers import process_env, served

# Made-up facts, as a user would paste them, and questions that do not reuse the text's words.
FACTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "zorbia": (
        "The capital of Zorbia is Quenta. Zorbia exports blue salt. "
        "The national animal of Zorbia is the glass heron. The currency of Zorbia is the velt.",
        [
            ("Which city serves as the capital of Zorbia?", "Quenta"),
            ("What is Zorbia's main export?", "blue salt"),
            ("Which animal is the national symbol of Zorbia?", "glass heron"),
            ("What money do people pay with in Zorbia?", "velt"),
        ],
    ),
    "acme": (
        "Acme Corp was founded in 1987 by Lena Holt. Acme's headquarters are in Tarrow. "
        "Acme sells rocket skates.",
        [
            ("Who is the founder of Acme Corp?", "Lena Holt"),
            ("In which year did Acme Corp start?", "1987"),
            ("In which town is Acme based?", "Tarrow"),
            ("What product is Acme known for selling?", "rocket skates"),
        ],
    ),
    "mina": (
        "Mina's cat is named Pixel. Pixel likes sardines. Mina has a parrot called Ozzy.",
        [
            ("What did Mina name her cat?", "Pixel"),
            ("What food does Pixel enjoy?", "sardines"),
            ("What is the name of the parrot that Mina owns?", "Ozzy"),
        ],
    ),
}
UNRELATED = ["How do volcanoes form?", "What is the boiling point of water?", "Who wrote Hamlet?"]


def normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


class Server:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=600)

    def memorize(self, topic: str, **body: Any) -> dict[str, Any]:
        started = time.perf_counter()
        response = self.http.post("/memorize", json={"topic": topic, **body})
        response.raise_for_status()
        job_id = response.json()["job_id"]
        while (job := self.http.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
            time.sleep(1)
        job["seconds"] = time.perf_counter() - started
        if job["status"] != "succeeded":
            raise RuntimeError(f"job for {topic} ended {job['status']}: {job['error']}")
        while (
            self.http.get(f"/admin/topics/{topic}").json()["active_version"]
            != job["adapter_version"]
        ):
            time.sleep(0.5)
        time.sleep(2)  # the server loads the new version within one registry poll
        return job

    def ask(self, prompt: str, topic: str | None, mode: str = "auto", tokens: int = 24) -> dict:
        body: dict[str, Any] = {"prompt": prompt, "mode": mode, "max_tokens": tokens}
        if topic is not None:
            body["topic"] = topic
        response = self.http.post("/generate", json=body)
        response.raise_for_status()
        return response.json()


def phonebook(server: Server, loads: list[str], ranks: list[int]) -> list[dict[str, Any]]:
    rows = []
    for load in loads:
        qa = phonebook_qa(load)
        for rank in ranks:
            topic = f"phonebook-{load.lower()}-r{rank}"
            job = server.memorize(topic, qa=qa, options={"rank": rank})
            hits = sum(
                digits_match(p["answer"], server.ask(p["question"], topic, "lora")["text"])
                for p in qa
            )
            row = {
                "load": load,
                "entries": len(qa),
                "rank": rank,
                "recall": hits / len(qa),
                "train_seconds": job["seconds"],
                "steps": job["total_steps"],
            }
            rows.append(row)
            print(
                f"phonebook {load:>3} ({len(qa)} entries) rank {rank:2}: recall {row['recall']:.1%}"
                f" in {row['train_seconds']:.0f} s ({row['steps']} steps)"
            )
    return rows


def modes(server: Server) -> dict[str, Any]:
    results: dict[str, Any] = {"train_seconds": {}}
    for augment in ("mix", "none"):
        for topic, (text, _) in FACTS.items():
            name = topic if augment == "mix" else f"{topic}-raw"
            job = server.memorize(name, text=text, options={"augment": augment})
            results["train_seconds"][name] = job["seconds"]
    questions = [(t, q, a) for t, (_, qs) in FACTS.items() for q, a in qs]

    def score(topic_of: str, mode: str) -> float:
        hits = 0
        for topic, question, answer in questions:
            name = topic if topic_of == "mix" else f"{topic}-raw"
            output = server.ask(question, None if mode == "base" else name, mode)["text"]
            hits += normalized(answer) in normalized(output)
        return hits / len(questions)

    results["base"] = score("mix", "base")
    for augment in ("mix", "none"):
        for mode in ("rag", "lora", "hybrid"):
            results[f"{mode}/{augment}"] = score(augment, mode)
    for key, value in results.items():
        if key != "train_seconds":
            print(f"made-up facts asked in other words, {key:12}: {value:.0%}")
    return results


def routing(server: Server) -> dict[str, Any]:
    """Run after `modes`: its "-raw" topics hold the same facts, so either copy counts as right."""
    right = 0
    questions = [(t, q) for t, (_, qs) in FACTS.items() for q, _ in qs]
    for topic, question in questions:
        chosen = server.ask(question, "auto", tokens=1)["topic"]
        right += chosen in (topic, f"{topic}-raw")
    unrelated = sum(server.ask(q, "auto", tokens=1)["topic"] is None for q in UNRELATED)
    result = {
        "accuracy": right / len(questions),
        "questions": len(questions),
        "unrelated_to_base": unrelated / len(UNRELATED),
    }
    print(
        f"routing: right topic for {result['accuracy']:.0%} of {len(questions)} questions; "
        f"{result['unrelated_to_base']:.0%} of unrelated questions go to the base model"
    )
    return result


def counterfact(server: Server, statements: int) -> dict[str, Any]:
    folder = PAPER / "counterfact"
    with open(folder / "counterfact_edit_1K.csv") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:statements]
    probes = [
        p
        for p in json.loads((folder / "counterfact_eval_qa.json").read_text())
        if any(p["question"].split(",")[0].split(" is ")[0] in t for t in texts)
    ]
    job = server.memorize("counterfact", documents=texts)
    result: dict[str, Any] = {"statements": len(texts), "probes": len(probes)}
    for mode in ("base", "lora", "hybrid"):
        hits = sum(
            normalized(p["answer"])
            in normalized(server.ask(p["question"], "counterfact", mode, tokens=12)["text"])
            for p in probes
        )
        result[mode] = hits / len(probes) if probes else None
    result["train_seconds"] = job["seconds"]
    print(
        f"counterfact ({len(texts)} statements, {len(probes)} probes): base {result['base']:.0%},"
        f" lora {result['lora']:.0%}, hybrid {result['hybrid']:.0%}"
    )
    return result


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if results.get("phonebook"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for rank in sorted({r["rank"] for r in results["phonebook"]}):
            rows = [r for r in results["phonebook"] if r["rank"] == rank]
            ax.plot(
                [r["entries"] for r in rows], [r["recall"] for r in rows], "o-", label=f"r{rank}"
            )
        ax.set(xlabel="PhoneBook entries memorized", ylabel="recall (digits exact)", ylim=(0, 1.05))
        ax.set_xscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "recall_phonebook.png", dpi=120)
    if results.get("modes"):
        fig, ax = plt.subplots(figsize=(6, 4))
        keys = [k for k in results["modes"] if k != "train_seconds"]
        ax.bar(keys, [results["modes"][k] for k in keys])
        ax.set(ylabel="recall, questions in other words", ylim=(0, 1.05))
        ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        fig.savefig(RESULTS / "recall_modes.png", dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="phonebook,modes,routing,counterfact")
    parser.add_argument("--loads", default="1K,2K,4K,8K")
    parser.add_argument("--ranks", default="4,8,16,32")
    parser.add_argument("--counterfact-statements", type=int, default=40)
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = process_env(data_dir=tmp, model_dir=str(MODEL_DIR), engine="hf")
        with served(env, Path(tmp) / "server.log") as (url, _):
            server = Server(url)
            if "phonebook" in only:
                ranks = [int(r) for r in args.ranks.split(",")]
                results["phonebook"] = phonebook(server, args.loads.split(","), ranks)
            if "modes" in only or "routing" in only:
                results["modes"] = modes(server)
            if "routing" in only:
                results["routing"] = routing(server)
            if "counterfact" in only:
                results["counterfact"] = counterfact(server, args.counterfact_statements)
    save("recall", results)
    plot(results)
    return results


if __name__ == "__main__":
    main()
