"""The knowledge index of one server process: every topic's passages, scored by one scorer.

`route` ranks topics by their best-matching passage (`topic: "auto"`); `search` returns the
passages that modes `rag` and `hybrid` put into the prompt. The index is rebuilt from the registry
whenever its documents change (see `loramem.serving.retrieval.refresh`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from loramem.serving.retrieval.scorers import PassageScorer


@dataclass(frozen=True)
class Passage:
    topic: str
    text: str
    # False for what only helps routing (questions generated from the knowledge): it is not
    # knowledge a prompt should quote.
    retrievable: bool = True
    # The topic's module that learned it (None: not learned yet).
    module: int | None = None


@dataclass(frozen=True)
class Hit:
    topic: str
    text: str
    score: float


@dataclass(frozen=True)
class TopicScore:
    topic: str
    score: float


def qa_passage(question: str, answer: str) -> str:
    return f"{question.strip()} {answer.strip()}"


class KnowledgeIndex:
    def __init__(self, scorer: PassageScorer) -> None:
        self.scorer = scorer
        self._passages: list[Passage] = []
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self._passages)

    def topics(self) -> set[str]:
        return {p.topic for p in self._passages}

    def replace(self, passages: Iterable[Passage]) -> None:
        unique = list(dict.fromkeys(passages))
        with self._lock:
            self.scorer.fit([p.text for p in unique])
            self._passages = unique

    def _scored(self, query: str) -> list[tuple[Passage, float]]:
        with self._lock:
            if not self._passages:
                return []
            return list(zip(self._passages, self.scorer.scores(query), strict=True))

    def route(self, query: str, topics: Sequence[str] | None = None) -> list[TopicScore]:
        """Topics ranked by their best passage; only those in `topics` when given."""
        best: dict[str, float] = {}
        for passage, score in self._scored(query):
            if topics is None or passage.topic in topics:
                best[passage.topic] = max(score, best.get(passage.topic, 0.0))
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
        return [TopicScore(topic, score) for topic, score in ranked]

    def rank_modules(self, query: str, topic: str) -> list[tuple[int, float]]:
        """The topic's modules ranked by their best passage."""
        best: dict[int, float] = {}
        for passage, score in self._scored(query):
            if passage.topic == topic and passage.module is not None:
                best[passage.module] = max(score, best.get(passage.module, 0.0))
        return sorted(best.items(), key=lambda item: (-item[1], item[0]))

    def search(self, query: str, topic: str, k: int) -> list[Hit]:
        hits = [
            Hit(p.topic, p.text, score)
            for p, score in self._scored(query)
            if p.topic == topic and p.retrievable and score > 0
        ]
        hits.sort(key=lambda hit: -hit.score)
        return hits[:k]
