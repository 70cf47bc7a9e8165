"""What a generator of training data produces from one stored text.

The paper found that QA pairs teach a LoRA memory far better than raw text, then summaries, then
rewrites, and that a mix is best. A generator turns a text into such items; some questions are
held out of training and only used to check that the memory answers questions in other words.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

ItemKind = Literal["qa", "summary", "rewrite", "recital"]


@dataclass(frozen=True)
class GeneratedItem:
    kind: ItemKind
    question: str | None = None
    answer: str | None = None
    text: str | None = None
    # Not trained on: a probe that asks a fact in other words than any training item.
    held_out: bool = False
    # The sentence it was read from: what its check gives the model to read.
    source: str | None = None
    # Why a check turned it down (see `checking`); None for an item that is used.
    rejected: str | None = None


@dataclass
class Generation:
    items: list[GeneratedItem] = field(default_factory=list)
    generator: str = ""
    # Why a configured generator was not used (down, junk) and another took over.
    fallback_reason: str | None = None


class GeneratorError(Exception):
    """The generator could not produce usable items; the message says why, without secrets."""


class DataGenerator(ABC):
    name: str

    @abstractmethod
    def generate(self, text: str) -> list[GeneratedItem]:
        """Items for one text; raises GeneratorError when it cannot."""
