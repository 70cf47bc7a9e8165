"""Text split into sentences and passages: retrieval indexes the passages that training learns, so
both sides cut a text the same way."""

from __future__ import annotations

import re
from collections.abc import Callable

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
PASSAGE_WORDS = 60


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def pack_sentences(text: str, size: Callable[[str], int], limit: int) -> list[str]:
    """Whole sentences packed into pieces of at most `limit` (by `size`; a long sentence stands
    alone)."""
    pieces: list[str] = []
    current: list[str] = []
    total = 0
    for sentence in split_sentences(text):
        length = size(sentence)
        if current and total + length > limit:
            pieces.append(" ".join(current))
            current, total = [], 0
        current.append(sentence)
        total += length
    if current:
        pieces.append(" ".join(current))
    return pieces


def text_passages(text: str, max_words: int = PASSAGE_WORDS) -> list[str]:
    """Passages of about `max_words` words."""
    return pack_sentences(text, lambda sentence: len(sentence.split()), max_words)
