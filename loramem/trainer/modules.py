"""Splitting a topic's knowledge into modules that each stay within a LoRA's capacity.

The paper: what a LoRA memorizes grows with its rank and collapses past a saturation load, and
several small modules (one per ~8K tokens at r4 on an 8B model) beat one big module when requests
are routed to the right one. Here a module's capacity is `tokens_per_rank x rank` tokens of
knowledge (as the client sent it), capped by a saturation limit. On SmolLM2-135M prose, not
PhoneBook, sets the default: a module holds a short article as well as a topic of its own, and
several articles in one module less (README, "Measured"). Documents fill the newest module
until it is full, then open a new one; memorizing more retrains only the modules that received
something.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loramem.trainer.training_data import Knowledge


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
    text = item.text or f"{item.question} {item.answer}"
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


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
