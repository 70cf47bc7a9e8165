"""Recitals: for every name and year of a text, an open question answered by the text itself.

The parser's questions cover only the facts its rules can read, and what no kept question asks,
the adapter does not learn. So each name of a passage (and each year) also gets an open question,
"What do you know about Skarholm?", answered by the sentences of the passage that mention it,
each in its resolved rewrite where the checks kept one ("Ilse Maranova's successor, Dr. Amaru
Feld, grew up on ... Skarholm"), so that the answer reads without its text. The adapter learns
the text keyed by every name it holds, in the QA form that it learns best.

Why the text's own sentences: self-study (Cartridges, Eyuboglu et al., 2025) has the base model
write the answers with the passage in its prompt. SmolLM2-135M, asked that way about the ten
names and years of a 291-word article (bench/data/prose/harbor_clinic.txt), invented places,
nationalities and dates in nine of its answers ("Quay Lane is a small, coastal town in the
island of Bora Bora"); the checks kept one. A larger base model may write better, and the
`model` and `endpoint` generators can; the recital does not depend on it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from loramem.core.text import split_sentences, text_passages
from loramem.trainer.augmentation.base import GeneratedItem
from loramem.trainer.augmentation.rules import named_entities
from loramem.trainer.matching import normalize

_YEAR = re.compile(r"^(1[0-9]|20)\d\d$")
# Sentences an answer recites at most: the first mentions, which usually introduce the thing.
MAX_SENTENCES = 3


def recital_questions(text: str) -> list[tuple[str, str, str]]:
    """(passage, thing, question) for every name and year of every passage of `text`."""
    asked = []
    for passage in text_passages(text):
        for thing, kind in named_entities(passage):
            if kind == "name":
                asked.append((passage, thing, f"What do you know about {thing}?"))
            elif kind == "date" and _YEAR.match(thing):
                asked.append((passage, thing, f"What happened in {thing}?"))
    return asked


def recitals(text: str, items: Sequence[GeneratedItem]) -> list[GeneratedItem]:
    """A recital of each name and year of `text`, read from its sentences or their kept
    rewrites; `source` is the passage it comes from."""
    rewritten = {
        " ".join((item.source or "").split()): item.text
        for item in items
        if item.kind == "rewrite" and item.rejected is None and item.text
    }
    written = []
    for passage, thing, question in recital_questions(text):
        wanted = f" {normalize(thing)} "
        sentences = [
            rewritten.get(" ".join(sentence.split()), sentence)
            for sentence in split_sentences(passage)
            if wanted in f" {normalize(sentence)} "
        ]
        if sentences:
            answer = " ".join(sentences[:MAX_SENTENCES])
            written.append(GeneratedItem("recital", question, answer, source=passage))
    return written
