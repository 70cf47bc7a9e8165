"""What a text names that no checked question asks about.

A job's recall for a text is measured on held-out questions, and those exist only for the facts
that a generator asked about and the checks kept. Facts nobody asked about are not verified, and
counting only the asked ones let a job report 100% for an adapter that a reader asking about the
rest found answering a third. So every name, number and date the text holds that no kept
question asks about counts as one more probe, failed (see `TrainingSet.recall`). A question asks
about its answer and about the first thing it names, what it is asked of ("When was Acme Corp
founded?"); a name further on in it ("... a shop in Boston?") is only read, never given back: a
job counted such names as asked and reported 86% on an article whose river, day and death toll
no kept question had as its answer (lora 33% there).
"""

from __future__ import annotations

from collections.abc import Iterable

from loramem.trainer.augmentation.base import GeneratedItem
from loramem.trainer.augmentation.rules import named_things
from loramem.trainer.matching import normalize, recalled


def unasked_things(text: str, items: Iterable[GeneratedItem]) -> list[str]:
    """The names, numbers and dates of `text` that no kept QA item asks about, in text order."""
    things = named_things(text)
    asked: set[str] = set()
    for item in items:
        if item.kind != "qa" or item.rejected is not None:
            continue
        asked.update(thing for thing in things if recalled(thing, item.answer or ""))
        subject = _first_named(item.question or "", things)
        if subject is not None:
            asked.add(subject)
    return [thing for thing in things if thing not in asked]


def _first_named(question: str, things: list[str]) -> str | None:
    padded = f" {normalize(question)} "
    found = [(padded.find(f" {said} "), t) for t in things if (said := normalize(t))]
    named = [(at, thing) for at, thing in found if at >= 0]
    return min(named)[1] if named else None
