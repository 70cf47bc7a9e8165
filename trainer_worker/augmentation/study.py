"""Self-study: the base model, reading a passage, says what it knows about each thing it names.

The parser's questions cover the facts its rules can read, and what no kept question asks, the
adapter does not learn. Here every name of a passage (and every year) gets an open question,
"What do you know about Skarholm?", which the base model answers with the passage in its prompt,
as mode rag asks it. The adapter then learns to give that answer without the passage: by
cross-entropy on the answer, or by matching the base model's distribution over it (objective
"distill"), which is the self-study of Cartridges (Eyuboglu et al., 2025) with questions chosen
by the parser rather than by the model.

An answer is kept only when it stays with its passage: it names the thing asked about, brings in
no name or number that the text does not hold, and most of its words come from the passage.
"""

from __future__ import annotations

import re

from server.retrieval.index import text_passages
from trainer_worker.augmentation.base import GeneratedItem
from trainer_worker.augmentation.checking import ReadBack, invented_facts, normalized_words
from trainer_worker.augmentation.rules import named_entities

# Of an answer's words (stop words aside), how many must be the passage's.
MIN_GROUNDED_SHARE = 0.7
_YEAR = re.compile(r"^(1[0-9]|20)\d\d$")
_SHORT_WORDS = 3


def study_questions(text: str) -> list[tuple[str, str, str]]:
    """(passage, thing, question) for every name and year of every passage of `text`."""
    asked = []
    for passage in text_passages(text):
        for thing, kind in named_entities(passage):
            if kind == "name":
                asked.append((passage, thing, f"What do you know about {thing}?"))
            elif kind == "date" and _YEAR.match(thing):
                asked.append((passage, thing, f"What happened in {thing}?"))
    return asked


def study(text: str, read: ReadBack) -> list[GeneratedItem]:
    """The base model's answers to `study_questions`, each kept or rejected with the reason."""
    asked = study_questions(text)
    replies = read([(passage, question) for passage, _, question in asked])
    items = []
    for (passage, thing, question), reply in zip(asked, replies, strict=True):
        answer = _whole_sentences(reply)
        items.append(
            GeneratedItem(
                "study",
                question=question,
                answer=answer,
                source=passage,
                rejected=_reason_to_reject(thing, answer, passage, text),
            )
        )
    return items


def _whole_sentences(reply: str) -> str:
    """The reply's first paragraph up to its last full stop (generation stops mid-sentence)."""
    first = " ".join(reply.strip().split("\n")[0].split())
    end = max(first.rfind(". "), first.rfind("."), first.rfind("!"), first.rfind("?"))
    return first[: end + 1] if end > 0 else first


def _reason_to_reject(thing: str, answer: str, passage: str, text: str) -> str | None:
    words = [w for w in normalized_words(answer) if len(w) > _SHORT_WORDS or w.isdigit()]
    if len(words) < 2:
        return "the answer says nothing"
    if " ".join(normalized_words(thing)) not in " ".join(normalized_words(answer)):
        return f"the answer does not name '{thing}'"
    invented = invented_facts(answer, text)
    if invented:
        return f"'{invented[0]}' is not in the text"
    read = set(normalized_words(passage))
    grounded = sum(w in read for w in words) / len(words)
    if grounded < MIN_GROUNDED_SHARE:
        return f"only {grounded:.0%} of the answer's words are the passage's"
    return None
