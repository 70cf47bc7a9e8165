"""Splitting a topic's knowledge into modules that each stay within a LoRA's capacity.

The paper: what a LoRA memorizes grows with its rank and collapses past a saturation load, and
several small modules (one per ~8K tokens at r4 on an 8B model) beat one big module when requests
are routed to the right one. Here a module's capacity is `tokens_per_rank x rank` tokens of
knowledge (as the client sent it), capped by a saturation limit. On SmolLM2-135M prose, not
PhoneBook, sets the default: a module holds a short article as well as a topic of its own, and
several articles in one module less (README, "Measured"). A text longer than one module holds
is stored as parts that each fit one (`parts_within`). Documents fill the newest module until it
is full, then open a new one; memorizing more retrains only the modules that received something.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loramem.core.text import split_sentences
from loramem.trainer.training_data import Knowledge

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# A paragraph that ends without a sentence's punctuation and is this short is a heading: it goes
# with the paragraph after it, never at the end of a part.
_HEADING_WORDS = 12
_SENTENCE_END = (".", "!", "?", '"', "'", ")", "\u201d")


@dataclass(frozen=True)
class StoredDocument:
    id: int
    job_id: str | None  # the job that brought it
    module: int | None  # None: not learned by any module yet
    knowledge: Knowledge


@dataclass
class ModuleLoad:
    number: int
    tokens: int
    items: int
    capacity: int


def module_capacity(rank: int, tokens_per_rank: int, saturation_tokens: int) -> int:
    return min(tokens_per_rank * rank, saturation_tokens)


def knowledge_tokens(tokenizer: Any, item: Knowledge) -> int:
    return _tokens(tokenizer, item.text or f"{item.question} {item.answer}")


def _tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def parts_within(tokenizer: Any, text: str, capacity: int) -> list[str]:
    """`text` as consecutive parts that each fit a module of `capacity` tokens: as few as fit,
    of about equal size, cut between paragraphs, or between sentences inside a paragraph that is
    longer than a part. A text that fits is one part; a sentence longer than a part is one.

    One module holding a long document learns less of it than several do (eight articles in one
    module against one each; README, "Measured"), and takes longer to train."""
    total = _tokens(tokenizer, text)
    if total <= capacity:
        return [text]
    target = math.ceil(total / math.ceil(total / capacity))
    # (what joins it to the piece before, the piece, the tokens of both) in the text's order.
    pieces: list[tuple[str, str, int]] = []
    for paragraph in _paragraphs(text):
        size = _tokens(tokenizer, "\n\n" + paragraph)
        if size <= target:
            pieces.append(("\n\n", paragraph, size))
            continue
        for i, sentence in enumerate(split_sentences(paragraph)):
            joint = " " if i else "\n\n"
            pieces.append((joint, sentence, _tokens(tokenizer, joint + sentence)))
    parts: list[str] = []
    current, current_size = "", 0
    for joint, piece, size in pieces:
        # Each part ends at the cut nearest its share of the text, and within a module.
        if current and (current_size + size > capacity or current_size + size / 2 > target):
            parts.append(current)
            current, current_size = "", 0
        current = f"{current}{joint}{piece}" if current else piece
        current_size += size
    parts.append(current)
    return parts


def _paragraphs(text: str) -> list[str]:
    """The text's paragraphs, each heading joined to the paragraph it heads."""
    paragraphs: list[str] = []
    heading = ""
    for paragraph in (p.strip() for p in _PARAGRAPH_BREAK.split(text)):
        if not paragraph:
            continue
        paragraph = f"{heading}\n\n{paragraph}" if heading else paragraph
        is_heading = (
            not paragraph.endswith(_SENTENCE_END) and len(paragraph.split()) <= _HEADING_WORDS
        )
        heading = paragraph if is_heading else ""
        if not is_heading:
            paragraphs.append(paragraph)
    if heading:
        paragraphs.append(heading)
    return paragraphs


def assign_modules(
    tokenizer: Any,
    documents: Sequence[StoredDocument],
    loads: dict[int, ModuleLoad],
    capacity: int,
) -> tuple[dict[int, int], dict[int, ModuleLoad]]:
    """Gives every document without a module one: (document id -> module, new loads).

    A document never splits across modules; one larger than a module's capacity gets a module
    of its own (it is still learned, past the budget)."""
    loads = {n: ModuleLoad(m.number, m.tokens, m.items, m.capacity) for n, m in loads.items()}
    assignments: dict[int, int] = {}
    for document in documents:
        if document.module is not None:
            continue
        size = knowledge_tokens(tokenizer, document.knowledge)
        newest = loads[max(loads)] if loads else None
        if newest is None or (newest.tokens > 0 and newest.tokens + size > newest.capacity):
            number = newest.number + 1 if newest else 0
            newest = loads[number] = ModuleLoad(number, 0, 0, capacity)
        newest.tokens += size
        newest.items += 1
        assignments[document.id] = newest.number
    return assignments, loads
