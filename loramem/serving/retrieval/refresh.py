"""Keeps a server's knowledge index in line with the registry's documents, by polling (the
registry is the only state servers share)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import func, select

from loramem.core.registry.db import Database
from loramem.core.registry.models import Document, GeneratedRecord, Topic
from loramem.core.text import text_passages
from loramem.serving.polling import poll_forever
from loramem.serving.retrieval.index import KnowledgeIndex, Passage, qa_passage

log = logging.getLogger("loramem.retrieval")


Signature = tuple[int, int, int, int, frozenset[str]]


def _signature(db: Database) -> Signature:
    """Changes whenever documents are added, learned by a module, or forgotten with their topic
    (SQLite may reuse the ids of deleted rows, hence the topic ids)."""
    with db.session() as session:
        count, newest = session.execute(
            select(func.count(Document.id), func.max(Document.id))
        ).one()
        generated = session.scalar(select(func.count(GeneratedRecord.id)))
        learned = session.scalar(
            select(func.count(Document.id)).where(Document.module.is_not(None))
        )
        topics = frozenset(session.scalars(select(Topic.id)).all())
    return count or 0, newest or 0, generated or 0, learned or 0, topics


def load_passages(db: Database) -> list[Passage]:
    with db.session() as session:
        rows = session.execute(
            select(Topic.name, Document.question, Document.answer, Document.text, Document.module)
            .join(Document, Document.topic_id == Topic.id)
            .order_by(Document.id)
        ).all()
        # Questions a generator wrote from texts help routing find a topic by other words;
        # they are not quoted into prompts.
        questions = session.execute(
            select(Topic.name, GeneratedRecord.question, Document.module)
            .join(GeneratedRecord, GeneratedRecord.topic_id == Topic.id)
            .join(Document, Document.id == GeneratedRecord.document_id)
            .where(GeneratedRecord.question.is_not(None))
            .order_by(GeneratedRecord.id)
        ).all()
    passages: list[Passage] = []
    for topic, question, answer, text, module in rows:
        if question is not None and answer is not None:
            passages.append(Passage(topic, qa_passage(question, answer), module=module))
        elif text:
            passages.extend(Passage(topic, p, module=module) for p in text_passages(text))
    passages.extend(
        Passage(topic, q, retrievable=False, module=module) for topic, q, module in questions if q
    )
    return passages


class IndexRefresher:
    def __init__(self, index: KnowledgeIndex, db: Database) -> None:
        self.index = index
        self.db = db
        self._seen: Signature | None = None

    def refresh(self) -> bool:
        """Rebuilds the index if documents were added or removed since the last call."""
        signature = _signature(self.db)
        if signature == self._seen:
            return False
        self.index.replace(load_passages(self.db))
        self._seen = signature
        log.info(
            "knowledge index rebuilt: %d passages, %d topics",
            self.index.size,
            len(self.index.topics()),
        )
        return True

    async def watch(self, interval: float, changed: asyncio.Event | None = None) -> None:
        await poll_forever(lambda: asyncio.to_thread(self.refresh), interval, "documents", changed)
