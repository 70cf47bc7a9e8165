"""How an answer is compared with a reply: case, punctuation and spacing do not count."""

from __future__ import annotations

import re


def plain_words(text: str) -> list[str]:
    """Lower-case words without punctuation."""
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def normalize(text: str) -> str:
    return " ".join(plain_words(text))


def recalled(expected: str, generated: str) -> bool:
    """Whether `generated` says `expected` in whole words: "9" is not said by "1981"."""
    return f" {normalize(expected)} " in f" {normalize(generated)} "
