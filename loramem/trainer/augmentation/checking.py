"""Every generated item is checked before it is trained on or used as a probe.

A QA pair is kept only when its answer is in the text and the base model, given the passage the
question was read from, answers the question with that answer (round-trip consistency: a question
the model cannot answer with the text in front of it is broken or ambiguous, and training on it
teaches noise). A small base model reads poorly, though: SmolLM2-135M, reading the clinic
history, answered "When did Maranova retire?" with another sentence of the passage, and so lost
every question about the year. Where its free answer fails, the model is asked to choose
instead: the item is kept if, reading the passage, it finds the item's answer likely, and
likelier than any other answer asked about in the text by a margin, or if reading the passage
raised the item's answer by a margin more than any other (a multiple-choice round trip). The
other answers are those of the text's questions of the same kind (a number for "how old", a
person for "who"): the choice a reader would be given. Among every kind of answer, a small
model prefers a name it just read to a number, and lost "How old was Lise? -> eleven" to
"Anselm Brede". A rewrite or a summary is kept only when it keeps the names and numbers of
what it restates and adds none. A rejected item is kept with its reason, for the dashboard, and
used for nothing.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence

from loramem.core.text import split_sentences
from loramem.trainer.augmentation.base import GeneratedItem
from loramem.trainer.matching import plain_words

# (passage, question) pairs -> what the model answers to each, reading the passage.
ReadBack = Callable[[Sequence[tuple[str, str]]], list[str]]
# (passage, question, candidate answers) requests -> for each, how likely the model finds each
# candidate, reading the passage (none where it is ""): the mean log-probability of its tokens.
# Asked for all of a text's undecided questions at once: their prompts are read as one batch.
ScoreAnswers = Callable[[Sequence[tuple[str, str, Sequence[str]]]], list[list[float]]]

# How much likelier (nats a token) the item's answer must be than the likeliest other answer,
# and how likely it must be itself: on the clinic history the answers the model chose right were
# 0.5 to 2.3 nats ahead, at -1.2 to -2.9 nats a token; a model that does not read (random
# weights) puts about -11 on any answer, and may still rank one first by chance.
CHOICE_MARGIN = 0.4
CHOICE_FLOOR = -4.0
# A likelihood favours answers of common tokens and words of the question itself: for "What was
# the current managing director called?", "the current managing director" (-2.7 nats a token)
# and "2008" (-3.7) beat "Idris Kell" (-4.7), though reading the sentence that names him made his
# name 7.8 nats a token likelier and no other answer more than 3.6. So an answer is chosen too
# when reading raised it by this much more than every other answer, and is likely enough that a
# model that does not read could not get there by chance: the tiny random-weight model of the
# tests scores every answer at -10 to -15 nats a token (the uniform over 49,152 tokens is
# -10.8), and the passage moves its scores by up to 4.3 nats either way. On the eight prose
# articles of bench.recall, with it (and "forty-one" read as 41) 35 more questions passed (25
# trained, 11 held-out probes; 5 of the 25 as broken as some the old rule lets through:
# "Quillmark came from added to what?"), and kept questions taught 64 of the benchmark's 96
# answers against 58.
CHOICE_GAIN_MARGIN = 1.0
CHOICE_GAIN_FLOOR = -8.0
MAX_RIVALS = 8

MAX_ANSWER_WORDS = 12
_STOPWORDS = {
    "a", "an", "the", "of", "and", "or", "in", "on", "at", "to", "for", "by", "with", "about",
    "is", "was", "it", "its", "that", "this", "some", "roughly", "around", "than", "more", "less",
}  # fmt: skip
# Names and numbers: what a restatement must neither drop nor invent.
_FACT_WORD = re.compile(r"\b(?:\d+(?:[.,]\d+)*|[A-Z][a-z]+(?:-[A-Za-z]+)*)\b")


_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate((
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
        "nineteen",
    ))
} | {"hundred": "100"}  # fmt: skip
_TENS = {
    word: 10 * value
    for value, word in enumerate(
        ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"), start=2
    )
}


def normalized_words(text: str) -> list[str]:
    """Lower-case words without punctuation, numbers up to 99 as digits ("eleven" and "11",
    "forty-one" and "41")."""
    words: list[str] = []
    tens = 0  # the value of the word before, where it was "twenty" to "ninety"
    for word in plain_words(text):
        unit = _NUMBER_WORDS.get(word, word)
        if tens and len(unit) == 1 and unit != "0":
            words[-1] = str(tens + int(unit))
            tens = 0
            continue
        tens = _TENS.get(word, 0)
        words.append(str(tens) if tens else unit)
    return words


def consistent(expected: str, reply: str) -> bool:
    """Whether `reply` gives `expected`: all of its content words, or only some of them and
    nothing else ("30 people" for "about 30 people", "the looms" for "the original looms")."""
    first_line = reply.strip().split("\n")[0]
    wanted = _content_words(expected)
    given = _content_words(first_line)
    if not wanted or not given:
        return False
    return all(w in given for w in wanted) or (
        len(given) <= len(wanted) + 1 and set(given) <= set(wanted) | _STOPWORDS
    )


def check_items(
    items: Sequence[GeneratedItem],
    text: str,
    read_back: ReadBack,
    score_answers: ScoreAnswers | None = None,
) -> list[GeneratedItem]:
    """The items with `rejected` set to the reason wherever a check failed; with
    `score_answers`, a question whose free answer failed may still pass by choice."""
    words = " ".join(normalized_words(text))
    sentences = split_sentences(" ".join(text.split()))
    checked: list[GeneratedItem] = []
    # Each question's wording -> where it was first asked.
    first_asked: dict[str, int] = {}
    for item in items:
        reason = _reason_to_reject(item, words, text)
        if reason is None and item.kind == "qa":
            reason = _repeated(item, checked, first_asked)
        checked.append(dataclasses.replace(item, rejected=reason))
    asked = [i for i, item in enumerate(checked) if item.kind == "qa" and item.rejected is None]
    windows = {i: _sentence_window(checked[i], sentences) for i in asked}
    replies = read_back([(windows[i], checked[i].question or "") for i in asked])
    failed = [
        (index, reply)
        for index, reply in zip(asked, replies, strict=True)
        if not consistent(checked[index].answer or "", reply)
    ]
    chosen = (
        _chosen(checked, asked, windows, [index for index, _ in failed], score_answers)
        if score_answers is not None
        else set()
    )
    for index, reply in failed:
        if index in chosen:
            continue
        said = " ".join(reply.split())[:80] or "nothing"
        checked[index] = dataclasses.replace(
            checked[index], rejected=f"reading the passage, the base model answered '{said}'"
        )
    return checked


def _chosen(
    checked: list[GeneratedItem],
    asked: list[int],
    windows: dict[int, str],
    undecided: list[int],
    score_answers: ScoreAnswers,
) -> set[int]:
    """The items among `undecided` whose answer the model, reading its passage, prefers to
    each other answer of its kind in the text by the margin: finds it likely and likelier, or
    finds that reading raised it more (with no rival, finds it likely, or reading raised it).
    Answers that share a content word with the item's ("eleven" for "eleven years") are no
    rivals: choosing between them says nothing."""
    kinds = {index: asks_for(checked[index].question or "") for index in asked}
    candidates: dict[int, list[str]] = {}
    for index in undecided:
        own = checked[index].answer or ""
        words = set(_content_words(own))
        alike = [i for i in asked if kinds[i] == kinds[index]]
        rivals = [
            answer
            for answer in _nearest_answers(checked, alike, index)
            if not words.intersection(_content_words(answer))
        ]
        candidates[index] = [own, *rivals]
    if not candidates:
        return set()

    def requests(indices: list[int], read: bool) -> list[tuple[str, str, Sequence[str]]]:
        return [
            (windows[index] if read else "", checked[index].question or "", candidates[index])
            for index in indices
        ]

    scored = list(candidates)
    read = dict(zip(scored, score_answers(requests(scored, read=True)), strict=True))
    chosen = {
        index
        for index, scores in read.items()
        if scores[0] >= CHOICE_FLOOR
        and scores[0] - max(scores[1:], default=-math.inf) >= CHOICE_MARGIN
    }
    scored = [index for index in scored if index not in chosen]
    if not scored:
        return chosen
    for index, blind in zip(scored, score_answers(requests(scored, read=False)), strict=True):
        gains = [
            with_passage - without for with_passage, without in zip(read[index], blind, strict=True)
        ]
        if read[index][0] >= CHOICE_GAIN_FLOOR and (
            gains[0] - max([*gains[1:], 0.0]) >= CHOICE_GAIN_MARGIN
        ):
            chosen.add(index)
    return chosen


def _nearest_answers(checked: list[GeneratedItem], asked: list[int], index: int) -> list[str]:
    """The answers of the `asked` questions nearest to item `index` in the text (items come in
    the order of its sentences), each once however it is worded ("the river Lusk", "river
    Lusk"), at most `MAX_RIVALS` + 1 of them: a long document's every answer would make the
    choice cost grow with the square of its length."""
    distinct: dict[frozenset[str], str] = {}
    for i in sorted(asked, key=lambda i: abs(i - index)):
        answer = checked[i].answer or ""
        distinct.setdefault(frozenset(_content_words(answer)), answer)
        if len(distinct) > MAX_RIVALS:
            break
    return list(distinct.values())


# What a question asks for, by its question word; any other question asks for a thing. Where a
# question holds two, the first decides ("Who was keeper when ...?").
_ASKS_FOR = re.compile(
    r"\b(?:(?P<amount>how (?:many|much|old|long|far|often|big|large|tall|high|heavy|fast)|"
    r"(?:what|which) age)|(?P<time>when|(?:what|which) (?:year|month|day|date|time|century))|"
    r"(?P<person>who|whom|whose)|(?P<place>where))\b",
    re.IGNORECASE,
)


def asks_for(question: str) -> str:
    """The kind of answer a question asks for: amount, time, person, place or thing."""
    match = _ASKS_FOR.search(question)
    return (match.lastgroup if match else None) or "thing"


def _repeated(
    item: GeneratedItem, checked: list[GeneratedItem], first_asked: dict[str, int]
) -> str | None:
    """Why a question asked before is not kept again. Asked with another answer, the first
    one goes too: a question the text answers in two ways ("What does the trust keep?": "a
    register", "a reserve") is ambiguous, and no adapter could give both answers exactly."""
    key = " ".join(normalized_words(item.question or ""))
    first = first_asked.setdefault(key, len(checked))  # the item goes next into `checked`
    if first == len(checked):
        return None
    earlier = checked[first]
    if set(_content_words(earlier.answer or "")) == set(_content_words(item.answer or "")):
        return "the same question was written before"
    reason = f"the text answers this question in two ways: '{earlier.answer}', '{item.answer}'"
    if earlier.rejected is None:
        checked[first] = dataclasses.replace(earlier, rejected=reason)
    return reason


def _content_words(text: str) -> list[str]:
    return [w for w in normalized_words(text) if w not in _STOPWORDS]


def _reason_to_reject(item: GeneratedItem, words: str, text: str) -> str | None:
    if item.kind == "qa":
        question, answer = item.question or "", item.answer or ""
        if not question.strip() or not answer.strip():
            return "empty question or answer"
        if len(answer.split()) > MAX_ANSWER_WORDS:
            return f"the answer is longer than {MAX_ANSWER_WORDS} words: a clause, not a fact"
        if f" {' '.join(normalized_words(answer))} " not in f" {words} ":
            return "the answer is not in the text"
        return None
    restated = item.text or ""
    if not restated.strip():
        return "empty text"
    written = _fact_words(restated)
    if item.kind == "rewrite" and item.source:
        dropped = sorted(_fact_words(item.source) - written)
        if dropped:
            return f"the rewrite drops '{dropped[0]}' from its sentence"
    invented = sorted(w for w in written if w not in text)
    if invented:
        return f"'{invented[0]}' is not in the text"
    return None


def _fact_words(text: str) -> set[str]:
    """Its names and numbers (a capital that only starts a sentence is no name)."""
    words = set()
    for match in _FACT_WORD.finditer(text):
        before = text[: match.start()].rstrip()
        if (before and before[-1] not in '.!?"') or match.group()[0].isdigit():
            words.add(match.group())
    return words


def _sentence_window(item: GeneratedItem, sentences: list[str]) -> str:
    """The item's sentence and the one before it (which a pronoun in it may need), or the text's
    opening when the item names no sentence."""
    source = " ".join((item.source or "").split())
    for index, sentence in enumerate(sentences):
        if source and source.startswith(sentence[:40]):
            return " ".join(sentences[max(0, index - 1) : index + 1])
    return source or " ".join(sentences[:3])
