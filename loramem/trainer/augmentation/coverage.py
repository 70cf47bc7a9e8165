"""What a text names that no checked question asks about.

A job's recall for a text is measured on held-out questions, and those exist only for the facts
that a generator asked about and the checks kept. Facts nobody asked about are not verified, and
counting only the asked ones let a job report 100% for an adapter that a reader asking about the
rest found answering a third. So every name, number and date the text holds that no kept
question or answer mentions counts as one more probe, failed (see `TrainingSet.recall`).
"""

from __future__ import annotations

from collections.abc import Iterable

from loramem.trainer.augmentation.base import GeneratedItem
from loramem.trainer.augmentation.rules import named_things
from loramem.trainer.matching import normalize


def unasked_things(text: str, items: Iterable[GeneratedItem]) -> list[str]:
    """The names, numbers and dates of `text` that no kept QA item mentions, in text order."""
    asked = " ".join(
        normalize(f"{item.question} {item.answer}")
        for item in items
        if item.kind == "qa" and item.rejected is None
    )
    padded = f" {asked} "
    return [thing for thing in named_things(text) if f" {normalize(thing)} " not in padded]
