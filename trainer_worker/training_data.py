"""Turns a topic's stored knowledge into training examples and recall probes.

QA pairs are formatted exactly as /generate formats a question (the chat template), and the loss
covers only the answer and its end-of-turn token. Texts are split into chunks and learned as plain
language modelling; their probes ask the model to complete a sentence it was taught. (Rewriting
texts into QA, summaries and paraphrases, which the paper found works far better, builds on this.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from server.prompting import answer_ids, question_ids

IGNORE_INDEX = -100
MAX_CHUNK_TOKENS = 192
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Knowledge:
    """A stored document, as the trainer needs it."""

    question: str | None = None
    answer: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class TrainingExample:
    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class RecallProbe:
    prompt_ids: list[int]
    expected: str


@dataclass(frozen=True)
class TrainingSet:
    examples: list[TrainingExample]
    probes: list[RecallProbe]

    @property
    def tokens(self) -> int:
        return sum(len(example.input_ids) for example in self.examples)


def build_training_set(tokenizer: Any, knowledge: Iterable[Knowledge]) -> TrainingSet:
    examples: list[TrainingExample] = []
    probes: list[RecallProbe] = []
    for item in knowledge:
        if item.question is not None and item.answer is not None:
            prompt = question_ids(tokenizer, item.question)
            answer = answer_ids(tokenizer, item.answer)
            examples.append(TrainingExample(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer))
            probes.append(RecallProbe(prompt, item.answer))
        elif item.text:
            for chunk in chunk_text(tokenizer, item.text):
                ids = _text_ids(tokenizer, chunk)
                examples.append(TrainingExample(ids, list(ids)))
                probes.extend(_completion_probes(tokenizer, chunk))
    return TrainingSet(examples, probes)


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chunk_text(tokenizer: Any, text: str, max_tokens: int = MAX_CHUNK_TOKENS) -> list[str]:
    """Whole sentences packed into chunks of at most `max_tokens` (a long sentence stands alone)."""
    chunks: list[str] = []
    current: list[str] = []
    length = 0
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        if not sentence:
            continue
        size = len(tokenizer(sentence, add_special_tokens=False)["input_ids"])
        if current and length + size > max_tokens:
            chunks.append(" ".join(current))
            current, length = [], 0
        current.append(sentence)
        length += size
    if current:
        chunks.append(" ".join(current))
    return chunks


def _completion_probes(tokenizer: Any, chunk: str) -> list[RecallProbe]:
    """For each sentence of six words or more: its first part as prompt, the rest as expected."""
    probes = []
    for sentence in _SENTENCE_END.split(chunk):
        words = sentence.split()
        if len(words) < 6:
            continue
        cut = max(3, (len(words) * 3) // 5)
        expected = " ".join(words[cut : cut + 4])
        probes.append(RecallProbe(_text_ids(tokenizer, " ".join(words[:cut])), expected))
    return probes


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def recalled(expected: str, generated: str) -> bool:
    return normalize(expected) in normalize(generated)
