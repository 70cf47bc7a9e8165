"""What the memory recalls, through the HTTP API of a real `loramem serve` on the default model:
the paper's experiments at this project's scale.

    .venv/bin/python -m bench.recall [--only phonebook,modes,routing,counterfact,modules,prose,
                                             prose-together,prose-modules]
                                     [--loads 1K,2K,4K,8K] [--ranks 4,8,16,32]
                                     [--sectors 4] [--entries 24] [--module-rank 4]
                                     [--module-parts oracle,split,single]
                                     [--compose sum,weighted,ties,confident]
                                     [--articles harbor_clinic,quillmark,...]
                                     [--text-options '{"objective": "distill"};{}']

- phonebook: PhoneBook (../shared/data/paper) at each knowledge load and rank, each in one module
  (the server's capacity split is lifted), trained with the default recipe; recall = greedy exact
  match on the answer's digits, and the time to train.
- modes: made-up facts given as plain text, asked in other words than the text uses, answered by
  the base model, rag, lora and hybrid, with augmentation ("mix") and without ("none").
- routing: the same questions with `topic: "auto"` among the topics memorized: how often the
  router picks the topic that holds the fact (and how often it stays away from unrelated ones).
- counterfact: counterfactual statements memorized as text; share of completions that give the
  new object rather than what the base model believes.
- modules: the paper's multi-module setting on the first entries of a few 128K sectors, in a
  server whose module capacity is one sector at the small rank: each sector its own topic asked
  with oracle routing and with `topic: "auto"`; all sectors in one topic that the server splits
  into modules, answered by the top-1 module or the top 2 and top 3 composed by each method
  (sum, weighted, ties, confident), with the mean latency of a request; and one module of the same
  parameter budget (rank x sectors) holding everything.
- prose: the hand-written articles and documents of bench/data/prose, each memorized as its own
  topic with the defaults, asked the questions of questions.json (worded otherwise than the text)
  in modes base, rag, lora and hybrid and with `topic: "auto"`; per text and overall, with each
  job's time, its own recall, the generated items kept and rejected, and the server's peak
  memory (VmHWM) during the job.
- prose-together: the articles as the documents of one topic held by one module (the capacity
  split lifted), asked the prose questions in lora and hybrid mode: what one module holds of
  prose, against `prose`'s one topic an article.
- prose-modules: the articles' paragraphs as the documents of one topic, one module each, where
  routing among modules misses: oracle (each paragraph's own topic), top-1, and the top 2 and
  top 3 composed by each method.

Writes bench/results/recall.json and recall_*.png. The full grid takes hours on 2 CPU cores;
`--loads 1K --ranks 8` takes a few minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    MODEL_DIR,
    ONE_MODULE,
    PROSE,
    RESULTS,
    add_paper_data_flag,
    digits_match,
    memory_gib,
    paper_data,
    phonebook_qa,
    save,
    use_paper_data_flag,
)
from loramem.trainer.matching import normalize, recalled
from loramem.trainer.training_data import Knowledge
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


# The topic whose documents are the paragraphs of prose articles, a module each.
SPLIT_PROSE_TOPIC = "split-prose"
PROSE_MODES = ("base", "rag", "lora", "hybrid", "auto")


def prose_modes(top_k: int) -> tuple[str, ...]:
    """PROSE_MODES, and past top-1 the adapter's modes again with `top_k` modules composed (a text
    stored in parts has a module each)."""
    if top_k <= 1:
        return PROSE_MODES
    return (*PROSE_MODES, f"lora top-{top_k}", f"hybrid top-{top_k}")


def ask_prose(server: Server, question: str, article: str, mode: str) -> dict[str, Any]:
    """A prose benchmark's question about `article`, asked in one of `prose_modes`."""
    mode, _, top_k = mode.partition(" top-")
    topic = None if mode == "base" else "auto" if mode == "auto" else f"prose-{article}"
    composed = {"top_k": int(top_k)} if top_k else {}
    return server.ask(question, topic, "auto" if mode == "auto" else mode, tokens=32, **composed)


class Server:
    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.pid = pid
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

    def ask(
        self, prompt: str, topic: str | None, mode: str = "auto", tokens: int = 24, **extra: Any
    ) -> dict:
        body: dict[str, Any] = {"prompt": prompt, "mode": mode, "max_tokens": tokens, **extra}
        if topic is not None:
            body["topic"] = topic
        response = self.http.post("/generate", json=body)
        response.raise_for_status()
        return response.json()


# Settings of every server this run starts, from --server-setting (the run's own LORAMEM_
# variables are not passed on: each part sets what it measures).
SERVER_SETTINGS: dict[str, str] = {}


@contextmanager
def loramem_server(**settings: str) -> Iterator[Server]:
    """A served loramem on the default model with a fresh registry, and `settings`; its log is
    copied to bench/results/server.log when it stops."""
    with tempfile.TemporaryDirectory() as tmp:
        env = process_env(
            data_dir=tmp, model_dir=str(MODEL_DIR), engine="hf", **SERVER_SETTINGS, **settings
        )
        log = Path(tmp) / "server.log"
        try:
            with served(env, log) as (url, process):
                yield Server(url, process.pid)
        finally:
            RESULTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, RESULTS / "server.log")


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
                "steps": job["step"],  # fewer than the budget once early stopping fired
                "step_budget": job["total_steps"],
            }
            rows.append(row)
            print(
                f"phonebook {load:>3} ({len(qa)} entries) rank {rank:2}: recall {row['recall']:.1%}"
                f" in {row['train_seconds']:.0f} s ({row['steps']} of {row['step_budget']} steps)"
            )
    return rows


def modes(server: Server, options: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {"train_seconds": {}}
    for augment in ("mix", "none"):
        for topic, (text, _) in FACTS.items():
            name = topic if augment == "mix" else f"{topic}-raw"
            job = server.memorize(name, text=text, options={**options, "augment": augment})
            results["train_seconds"][name] = job["seconds"]
    questions = [(t, q, a) for t, (_, qs) in FACTS.items() for q, a in qs]

    def score(topic_of: str, mode: str) -> float:
        hits = 0
        for topic, question, answer in questions:
            name = topic if topic_of == "mix" else f"{topic}-raw"
            output = server.ask(question, None if mode == "base" else name, mode)["text"]
            hits += recalled(answer, output)
        return hits / len(questions)

    results["base"] = score("mix", "base")
    for augment in ("mix", "none"):
        for mode in ("rag", "lora", "hybrid"):
            results[f"{mode}/{augment}"] = score(augment, mode)
    for key, value in results.items():
        if key != "train_seconds":
            print(f"made-up facts asked in other words {options}, {key:12}: {value:.0%}")
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
    folder = paper_data("counterfact")
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
            recalled(p["answer"], server.ask(p["question"], "counterfact", mode, tokens=12)["text"])
            for p in probes
        )
        result[mode] = hits / len(probes) if probes else None
    result["train_seconds"] = job["seconds"]
    print(
        f"counterfact ({len(texts)} statements, {len(probes)} probes): base {result['base']:.0%},"
        f" lora {result['lora']:.0%}, hybrid {result['hybrid']:.0%}"
    )
    return result


COMPOSE_METHODS = ("sum", "weighted", "ties", "confident")


class Asked:
    """Recall and mean request latency of one way of serving a set of questions."""

    def __init__(self) -> None:
        self.hits = 0
        self.asked = 0
        self.seconds = 0.0

    def ask(self, server: Server, prompt: str, topic: str, tokens: int, **request: Any) -> dict:
        started = time.perf_counter()
        answer = server.ask(prompt, topic, "lora", tokens=tokens, **request)
        self.seconds += time.perf_counter() - started
        self.asked += 1
        return answer

    def record(self, result: dict[str, Any], name: str) -> None:
        result[name] = self.hits / self.asked
        result["seconds_per_request"][name] = self.seconds / self.asked
        print(f"{name:32}: recall {result[name]:.1%}, {self.seconds / self.asked:.2f} s a request")


def composed_ways(
    methods: list[str], deciding: list[int | None], top_ks: tuple[int, ...] = (2, 3)
) -> list[tuple[str, Any]]:
    """Top-1, then each top-k with each composition method: (name, request fields). Composing
    by confidence is asked once per count of deciding tokens (`confident_tokens`; None: the
    server's setting, 0: every candidate finishes its answer)."""
    ways: list[tuple[str, Any]] = [("top-1", {"top_k": 1})]
    for k in top_ks:
        for method in methods:
            if method != "confident":
                ways.append((f"top-{k} {method}", {"top_k": k, "compose": method}))
                continue
            for tokens in deciding:
                request = {"top_k": k, "compose": method}
                name = f"top-{k} {method}"
                if tokens == 0:
                    name += ", whole answers"
                if tokens:
                    name += f", deciding after {tokens} tokens"
                if tokens is not None:
                    request["confident_tokens"] = tokens
                ways.append((name, request))
    return ways


def multi_module(
    server: Server,
    sectors: list[list[dict[str, str]]],
    rank: int,
    parts: set[str],
    methods: list[str],
    deciding: list[int | None],
) -> dict[str, Any]:
    everything = [pair for sector in sectors for pair in sector]
    owner = {pair["question"]: f"sector-{i}" for i, sector in enumerate(sectors) for pair in sector}
    result: dict[str, Any] = {
        "sectors": len(sectors),
        "entries": len(everything),
        "rank": rank,
        "train_seconds": {},
        "steps": {},
        "seconds_per_request": {},
    }

    def train(topic: str, qa: list[dict[str, str]], topic_rank: int) -> None:
        job = server.memorize(topic, qa=qa, options={"rank": topic_rank})
        result["train_seconds"][topic] = job["seconds"]
        result["steps"][topic] = [job["step"], job["total_steps"]]

    def recall(name: str, topic_of: Callable[[str], str], **request: Any) -> None:
        """Asks every question; the share recalled, and for `topic: "auto"` the share routed to
        the sector that holds the answer."""
        asked, routed_right = Asked(), 0
        for pair in everything:
            question = pair["question"]
            answer = asked.ask(server, question, topic_of(question), 16, **request)
            asked.hits += digits_match(pair["answer"], answer["text"])
            routed_right += answer["topic"] == owner[question]
        asked.record(result, name)
        if topic_of(question) == "auto":
            result["routing_accuracy"] = routed_right / len(everything)
            print(f"multi-module: routing picked the right sector for {routed_right} questions")

    if "oracle" in parts:
        for i, sector in enumerate(sectors):
            train(f"sector-{i}", sector, rank)
        recall("oracle", owner.__getitem__)
        recall("router (topic auto)", lambda question: "auto")
    if "split" in parts:
        train("sectors", everything, rank)
        result["modules_of_split_topic"] = len(
            server.http.get("/admin/topics/sectors").json()["knowledge_modules"]
        )
        for name, request in composed_ways(methods, deciding):
            recall(f"split topic, {name}", lambda question: "sectors", **request)
    if "single" in parts:
        train("one-module", everything, rank * len(sectors))
        recall(f"one module r{rank * len(sectors)}", lambda question: "one-module")
    return result


def prose_paragraphs(articles: list[str]) -> list[tuple[str, str]]:
    """(article, paragraph) for every paragraph of the articles, in order."""
    return [
        (name, paragraph)
        for name in articles
        for paragraph in (PROSE / f"{name}.txt").read_text().split("\n\n")
        if paragraph.strip()
    ]


def memorize_split_prose(
    server: Server, paragraphs: list[tuple[str, str]]
) -> tuple[dict[str, Any], list[int]]:
    """The paragraphs as the documents of topic SPLIT_PROSE_TOPIC (one module each, in a server
    started with `paragraph_modules_setting`): the finished job, and each paragraph's module."""
    texts = [paragraph for _, paragraph in paragraphs]
    job = server.memorize(SPLIT_PROSE_TOPIC, documents=texts)
    topic = server.http.get(f"/admin/topics/{SPLIT_PROSE_TOPIC}").json()
    modules = modules_of(topic, texts)
    if any(len(m) != 1 for m in modules) or len(set().union(*modules)) != len(texts):
        raise SystemExit(f"the paragraphs were not one module each: modules {modules}")
    return job, [min(m) for m in modules]


def modules_of(topic: dict[str, Any], texts: list[str]) -> list[set[int]]:
    """The modules that learned each of the texts, from the topic's `/admin/topics` detail: a
    text longer than a module is stored as parts, each in a module of its own."""
    documents = [(" ".join(d["text"].split()), d["module"]) for d in topic["documents"]]
    return [
        {module for part, module in documents if part in " ".join(text.split())} for text in texts
    ]


def questions_by_paragraph(
    articles: list[str], paragraphs: list[tuple[str, str]]
) -> list[tuple[str, list[str], int]]:
    """The articles' questions as (question, accepted answers, index of the paragraph that holds
    the answer: the first, should several); questions whose answer no paragraph holds are left
    out."""
    questions = json.loads((PROSE / "questions.json").read_text())
    asked = []
    for name in articles:
        for question, accepted in questions[name]:
            holding = [
                i
                for i, (article, paragraph) in enumerate(paragraphs)
                if article == name and any(recalled(a, paragraph) for a in accepted)
            ]
            if holding:
                asked.append((question, accepted, holding[0]))
    return asked


def prose_modules(
    server: Server, articles: list[str], methods: list[str], deciding: list[int | None]
) -> dict[str, Any]:
    """Prose split into small modules, where the top-1 module is not always the right one.

    Each paragraph of the articles is one document of one topic, in a server whose module
    capacity holds one paragraph and no two, so each paragraph is its own module; a question in
    other words than the text is routed among them by the passages each learned. The oracle asks
    each question of a topic holding only its paragraph, trained on the same data as that module.
    """
    paragraphs = prose_paragraphs(articles)
    result: dict[str, Any] = {
        "articles": articles,
        "paragraphs": len(paragraphs),
        "train_seconds": {},
        "seconds_per_request": {},
    }
    for i, (_, paragraph) in enumerate(paragraphs):
        result["train_seconds"][f"paragraph-{i}"] = server.memorize(
            f"paragraph-{i}", text=paragraph
        )["seconds"]
    job, modules = memorize_split_prose(server, paragraphs)
    result["train_seconds"][SPLIT_PROSE_TOPIC] = job["seconds"]
    asked_questions = questions_by_paragraph(articles, paragraphs)
    result["questions"] = len(asked_questions)

    def recall(name: str, topic_of: Callable[[int], str], **request: Any) -> None:
        asked, routed_right = Asked(), 0
        for question, accepted, paragraph in asked_questions:
            answer = asked.ask(server, question, topic_of(paragraph), 32, **request)
            asked.hits += any(recalled(a, answer["text"]) for a in accepted)
            routed_right += answer["adapters"][0]["module"] == modules[paragraph]
        asked.record(result, name)
        if name == "top-1":
            result["top1_routing_accuracy"] = routed_right / len(asked_questions)
            print(f"top-1 picked the paragraph's module for {routed_right} questions")

    recall("oracle", lambda paragraph: f"paragraph-{paragraph}")
    for name, request in composed_ways(methods, deciding):
        recall(name, lambda paragraph: SPLIT_PROSE_TOPIC, **request)
    return result


def augmented_event(server: Server, job: dict[str, Any]) -> dict[str, Any]:
    """What the job's generation and checks made of its texts: items generated, kept, rejected."""
    events = server.http.get(f"/jobs/{job['id']}/events").json()["events"]
    [augmented] = [e["data"] for e in events if e["kind"] == "augmented"]
    return augmented


def trained_questions(topic: dict[str, Any]) -> list[tuple[str, str]]:
    """The generated questions and answers the topic (its `/admin/topics` detail) was trained
    on: kept by the checks, not held out as probes."""
    return [
        (item["question"], item["answer"])
        for item in topic["generated"]
        if item["kind"] == "qa" and item["kept"] and not item["held_out"]
    ]


def answers_taught(topic: dict[str, Any], questions: list[tuple[str, list[str]]]) -> int:
    """The benchmark's questions whose answer some trained question of the topic teaches:
    lora's reach."""
    taught = [answer for _, answer in trained_questions(topic) if normalize(answer)]
    return sum(
        any(recalled(a, t) or recalled(t, a) for a in accepted for t in taught)
        for _, accepted in questions
    )


def prose_together(server: Server, articles: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """What one module holds of prose: the articles as the documents of one topic, in a server
    whose module capacity holds them all (or as the run's settings split them), asked the same
    questions in lora and hybrid mode as `prose` asks each article's own topic."""
    questions = json.loads((PROSE / "questions.json").read_text())
    texts = [(PROSE / f"{name}.txt").read_text() for name in articles]
    Path(f"/proc/{server.pid}/clear_refs").write_text("5")
    job = server.memorize("prose-together", documents=texts, options=options)
    topic = server.http.get("/admin/topics/prose-together").json()
    article_modules = dict(zip(articles, modules_of(topic, texts), strict=True))
    augmented = augmented_event(server, job)
    asked = [(name, q, accepted) for name in articles for q, accepted in questions[name]]
    result: dict[str, Any] = {
        "articles": articles,
        "options": options,
        "words": sum(len(text.split()) for text in texts),
        "modules": topic["modules"],
        "train_seconds": job["seconds"],
        "steps": job["step"],
        "step_budget": job["total_steps"],
        "job_recall": job["recall"],
        "items_kept": augmented["kept"],
        "items_rejected": augmented["rejected"],
        "answers_taught": answers_taught(topic, [(q, a) for _, q, a in asked]),
        "peak_gib": memory_gib(server.pid)["peak_rss_gib"],
        "texts": {name: dict.fromkeys(("lora", "hybrid"), 0) for name in articles},
        # Where the articles are split into modules: how often a question's module is its article's.
        "routed_right": 0,
        "answers": [],
    }
    for name, question, accepted in asked:
        for mode in ("lora", "hybrid"):
            response = server.ask(question, "prose-together", mode, tokens=32)
            answer = response["text"]
            hit = any(recalled(a, answer) for a in accepted)
            result["texts"][name][mode] += hit
            if mode == "lora":
                result["routed_right"] += response["adapters"][0]["module"] in article_modules[name]
            result["answers"].append(
                {"article": name, "question": question, "mode": mode, "answer": answer, "hit": hit}
            )
    for mode in ("lora", "hybrid"):
        result[mode] = sum(row[mode] for row in result["texts"].values()) / len(asked)
    print(
        f"prose together {options}: {len(articles)} articles ({result['words']} words) in "
        f"{result['modules']} module(s) (a question's module its article's: "
        f"{result['routed_right']} of {len(asked)}), job {job['seconds']:.0f} s ({job['step']} of "
        f"{job['total_steps']} steps), own recall {job['recall']:.0%}, "
        f"{result['answers_taught']} of {len(asked)} answers taught, "
        f"peak {result['peak_gib']:.2f} GiB; lora {result['lora']:.0%}, "
        f"hybrid {result['hybrid']:.0%}; right answers per article (lora/hybrid of asked): "
        + ", ".join(
            f"{n} {r['lora']}/{r['hybrid']} of {len(questions[n])}"
            for n, r in result["texts"].items()
        )
    )
    return result


def prose(
    server: Server, articles: list[str], options: dict[str, Any], top_k: int = 1
) -> dict[str, Any]:
    questions = json.loads((PROSE / "questions.json").read_text())
    modes = prose_modes(top_k)
    result: dict[str, Any] = {"texts": {}, "options": options}
    for name in articles:
        text = (PROSE / f"{name}.txt").read_text()
        # The peak of this job alone: the kernel resets VmHWM on request.
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")
        job = server.memorize(f"prose-{name}", text=text, options=options)
        augmented = augmented_event(server, job)
        topic = server.http.get(f"/admin/topics/prose-{name}").json()
        result["texts"][name] = {
            "words": len(text.split()),
            "questions": len(questions[name]),
            "answers_taught": answers_taught(topic, questions[name]),
            # What the adapter was taught, beside what it answered (below).
            "trained_questions": trained_questions(topic),
            "train_seconds": job["seconds"],
            "job_recall": job["recall"],
            "items_kept": augmented["kept"],
            "items_rejected": augmented["rejected"],
            "peak_gib": memory_gib(server.pid)["peak_rss_gib"],
        }
        print(
            f"prose {name} {options}: job {job['seconds']:.0f} s, own recall {job['recall']:.0%}, "
            f"{augmented['kept']} items kept of {augmented['generated']}, "
            f"{result['texts'][name]['answers_taught']} of {len(questions[name])} answers taught, "
            f"peak {result['texts'][name]['peak_gib']:.2f} GiB"
        )
    hits = dict.fromkeys(modes, 0)
    routed = 0
    for name in articles:
        row = result["texts"][name]
        for question, accepted in questions[name]:
            for mode in modes:
                answer = ask_prose(server, question, name, mode)
                hit = any(recalled(a, answer["text"]) for a in accepted)
                row[mode] = row.get(mode, 0) + hit / len(questions[name])
                # Each answer kept, so that a run shows which facts each mode missed and how.
                row.setdefault("answers", []).append(
                    {"question": question, "mode": mode, "answer": answer["text"], "hit": hit}
                )
                hits[mode] += hit
                if mode == "auto":
                    routed += answer["topic"] == f"prose-{name}"
        print(f"prose {name} {options}: " + ", ".join(f"{m} {row[m]:.0%}" for m in modes))
    asked = sum(len(questions[name]) for name in articles)
    result["overall"] = {mode: hits[mode] / asked for mode in modes}
    result["overall"]["routing_accuracy"] = routed / asked
    result["questions"] = asked
    print(
        f"prose {options}, {asked} questions in other words: "
        + ", ".join(f"{m} {v:.0%}" for m, v in result["overall"].items())
    )
    return result


def module_tokens_per_rank(groups: list[list[Knowledge]], rank: int) -> int:
    """The capacity setting under which one module of `rank` holds exactly the largest group of
    knowledge (a PhoneBook sector, a paragraph)."""
    from transformers import AutoTokenizer

    from bench.common import model_path
    from loramem.trainer.modules import knowledge_tokens

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    largest = max(sum(knowledge_tokens(tokenizer, item) for item in group) for group in groups)
    return -(-largest // rank)


def paragraph_modules_setting(paragraphs: list[tuple[str, str]]) -> str:
    """`LORAMEM_MODULE_TOKENS_PER_RANK` for one module a paragraph at the default rank: the
    largest paragraph fits one, whole (`memorize_split_prose` checks that no two share one)."""
    from loramem.core.options import TrainingOptions

    groups = [[Knowledge(text=paragraph)] for _, paragraph in paragraphs]
    return str(module_tokens_per_rank(groups, TrainingOptions().rank))


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if results.get("phonebook"):
        # Recall shows where a rank saturates; the steps it took to learn show the strain before.
        fig, (recall_ax, steps_ax) = plt.subplots(1, 2, figsize=(10, 4))
        for rank in sorted({r["rank"] for r in results["phonebook"]}):
            rows = sorted(
                (r for r in results["phonebook"] if r["rank"] == rank), key=lambda r: r["entries"]
            )
            entries = [r["entries"] for r in rows]
            recall_ax.plot(entries, [r["recall"] for r in rows], "o-", label=f"r{rank}")
            steps_ax.plot(entries, [r["steps"] for r in rows], "o-", label=f"r{rank}")
        recall_ax.set(
            xlabel="PhoneBook entries memorized", ylabel="recall (digits exact)", ylim=(0, 1.05)
        )
        steps_ax.set(
            xlabel="PhoneBook entries memorized",
            ylabel="steps trained (stops once every answer is exact)",
        )
        loads = sorted({r["entries"] for r in results["phonebook"]})
        for ax in (recall_ax, steps_ax):
            ax.set_xscale("log")
            ax.set_xticks(loads, [str(n) for n in loads])
            ax.minorticks_off()
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
    if results.get("modules"):
        modules = results["modules"]
        keys = [k for k, v in modules.items() if isinstance(v, float) and k != "routing_accuracy"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.bar(keys, [modules[k] for k in keys])
        ax.set(
            ylabel="recall (digits exact)",
            ylim=(0, 1.05),
            title=f"{modules['entries']} PhoneBook entries, {modules['sectors']} sectors",
        )
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(RESULTS / "recall_modules.png", dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="phonebook,modes,routing,counterfact,modules")
    parser.add_argument("--loads", default="1K,2K,4K,8K")
    parser.add_argument("--ranks", default="4,8,16,32")
    parser.add_argument("--counterfact-statements", type=int, default=40)
    parser.add_argument("--sectors", type=int, default=4, help="128K sectors (modules)")
    parser.add_argument("--entries", type=int, default=24, help="PhoneBook entries a sector")
    parser.add_argument("--module-rank", type=int, default=4)
    parser.add_argument(
        "--module-parts",
        default="oracle,split,single",
        help="for --only modules: separate sector topics (oracle, router), the split topic "
        "(top-1 and composed top-k), one module holding everything",
    )
    parser.add_argument(
        "--compose", default=",".join(COMPOSE_METHODS), help="composition methods compared"
    )
    parser.add_argument(
        "--articles",
        default=",".join(sorted(p.stem for p in PROSE.glob("*.txt"))),
        help="texts of bench/data/prose for --only prose",
    )
    parser.add_argument(
        "--confident-tokens",
        default="server,0",
        help="composing by confidence: the deciding tokens compared (`server`: the server's "
        "setting; 0: whole answers)",
    )
    parser.add_argument(
        "--prose-top-k",
        type=int,
        default=1,
        help="for --only prose: also ask lora and hybrid with this many modules composed",
    )
    parser.add_argument(
        "--text-options",
        default="{}",
        help="';'-separated JSON objects: the memorize options of text jobs (modes, prose), "
        'each set in a fresh server, e.g. \'{"objective": "ce"};{"objective": "distill"}\'; '
        "the routing and counterfact parts use the first",
    )
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of every server started, by its short name: train_memory_gb=0.5",
    )
    add_paper_data_flag(parser)
    args = parser.parse_args(argv)
    use_paper_data_flag(args)
    for setting in args.server_setting:
        name, _, value = setting.partition("=")
        SERVER_SETTINGS[name.strip().lower()] = value.strip()
    only = set(args.only.split(","))
    deciding = [None if n == "server" else int(n) for n in args.confident_tokens.split(",")]
    results: dict[str, Any] = {}
    # One module, however much a topic holds, unless --server-setting sets the capacity.
    lifted = {name: str(value) for name, value in ONE_MODULE.items() if name not in SERVER_SETTINGS}
    if "phonebook" in only:
        # The grid measures what a single LoRA holds.
        with loramem_server(**lifted) as server:
            ranks = [int(r) for r in args.ranks.split(",")]
            results["phonebook"] = phonebook(server, args.loads.split(","), ranks)
    # Training options of the text jobs (modes, prose): one fresh server per set compared.
    text_options = [json.loads(options) for options in args.text_options.split(";")]
    if only & {"modes", "routing", "counterfact"}:
        with loramem_server() as server:
            if "modes" in only or "routing" in only:
                results["modes"] = modes(server, text_options[0])
            if "routing" in only:
                results["routing"] = routing(server)
            if "counterfact" in only:
                results["counterfact"] = counterfact(server, args.counterfact_statements)
    if "modules" in only:
        sectors = [phonebook_qa(f"128K_sector_{i:02}")[: args.entries] for i in range(args.sectors)]
        tokens_per_rank = module_tokens_per_rank(
            [[Knowledge(question=p["question"], answer=p["answer"]) for p in s] for s in sectors],
            args.module_rank,
        )
        with loramem_server(module_tokens_per_rank=str(tokens_per_rank)) as server:
            results["modules"] = multi_module(
                server,
                sectors,
                args.module_rank,
                set(args.module_parts.split(",")),
                args.compose.split(","),
                deciding,
            )
        results["modules"]["module_tokens_per_rank"] = tokens_per_rank
    if "modes" in only:
        for options in text_options[1:]:
            with loramem_server() as server:
                results[f"modes {options}"] = modes(server, options)
    if "prose" in only:
        for options in text_options:
            with loramem_server() as server:
                key = "prose" if options == text_options[0] else f"prose {options}"
                results[key] = prose(server, args.articles.split(","), options, args.prose_top_k)
    if "prose-together" in only:
        with loramem_server(**lifted) as server:
            results["prose_together"] = prose_together(
                server, args.articles.split(","), text_options[0]
            )
    if "prose-modules" in only:
        paragraphs_setting = paragraph_modules_setting(prose_paragraphs(args.articles.split(",")))
        with loramem_server(module_tokens_per_rank=paragraphs_setting) as server:
            results["prose_modules"] = prose_modules(
                server, args.articles.split(","), args.compose.split(","), deciding
            )
    save("recall", results)
    plot(results)
    return results


if __name__ == "__main__":
    main()
