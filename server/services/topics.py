"""Topics for operators: list, inspect, roll back to a version, forget."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select

from server.adapter_store import remove_adapter_files
from server.config import Settings
from server.errors import not_found
from server.registry.db import Database
from server.registry.models import (
    AdapterVersion,
    Document,
    GeneratedItem,
    Job,
    Topic,
    utcnow,
)
from server.schemas import JobResponse
from server.services.memory import job_response

log = logging.getLogger("loramem.topics")


def _summary(topic: Topic, documents: int) -> dict[str, Any]:
    active = next((v for v in topic.versions if v.version == topic.active_version), None)
    return {
        "name": topic.name,
        "active_version": topic.active_version,
        "active_recall": active.recall if active else None,
        "versions": len(topic.versions),
        "documents": documents,
        "modules": len(topic.modules),
        "created_at": topic.created_at,
        "updated_at": topic.updated_at,
    }


def _version(version: AdapterVersion, active: set[int | None]) -> dict[str, Any]:
    return {
        "version": version.version,
        "module": version.module,
        "active": version.version in active,
        "recall": version.recall,
        "rank": version.rank,
        "sha256": version.sha256,
        "size_bytes": version.size_bytes,
        "job_id": version.job_id,
        "created_at": version.created_at,
    }


class TopicService:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    def summaries(self) -> list[dict[str, Any]]:
        with self.db.session() as session:
            counts = dict(
                session.execute(
                    select(Document.topic_id, func.count()).group_by(Document.topic_id)
                ).all()
            )
            topics = session.scalars(select(Topic).order_by(Topic.name)).all()
            return [_summary(topic, counts.get(topic.id, 0)) for topic in topics]

    def detail(self, name: str) -> dict[str, Any]:
        with self.db.session() as session:
            topic = self._topic(session, name)
            documents = [
                {
                    "id": d.id,
                    "kind": d.kind,
                    "question": d.question,
                    "answer": d.answer,
                    "text": d.text,
                    "module": d.module,
                }
                for d in topic.documents
            ]
            return {
                **_summary(topic, len(documents)),
                "documents": documents,
                "generated": [
                    {
                        "id": g.id,
                        "document_id": g.document_id,
                        "generator": g.generator,
                        "kind": g.kind,
                        "question": g.question,
                        "answer": g.answer,
                        "text": g.text,
                        "held_out": g.held_out,
                        "source": g.source,
                        "kept": g.rejected is None,
                        "rejected": g.rejected,
                    }
                    for g in topic.generated
                ],
                "knowledge_modules": [
                    {
                        "module": m.number,
                        "active_version": m.active_version,
                        "tokens": m.tokens,
                        "items": m.items,
                        "capacity_tokens": m.capacity_tokens,
                    }
                    for m in topic.modules
                ],
                "versions": [
                    _version(v, {m.active_version for m in topic.modules}) for v in topic.versions
                ],
            }

    def activate(self, name: str, version: int) -> dict[str, Any]:
        """Serves `version` again for its module (a rollback, or a version kept below the recall
        threshold)."""
        with self.db.session(immediate=True) as session:
            topic = self._topic(session, name)
            chosen = next((v for v in topic.versions if v.version == version), None)
            if chosen is None:
                raise not_found(f"version {version} of topic '{name}'", param="version")
            module = next(m for m in topic.modules if m.number == chosen.module)
            module.active_version = version
            topic.active_version = version
            topic.updated_at = utcnow()
        log.info("topic %s activated version %d", name, version)
        return self.detail(name)

    def forget(self, name: str) -> dict[str, Any]:
        """Deletes the topic, its documents, generated data, versions and jobs, then its adapter
        files."""
        with self.db.session(immediate=True) as session:
            topic = self._topic(session, name)
            forgotten = {
                "topic": name,
                "versions": len(topic.versions),
                "documents": len(topic.documents),
                # Counted, not loaded: the database deletes them with their documents.
                "generated": session.scalar(
                    select(func.count(GeneratedItem.id)).where(GeneratedItem.topic_id == topic.id)
                ),
            }
            topic_id = topic.id
            session.delete(topic)
        # After the commit: a server that still serves the topic reads files it has loaded.
        remove_adapter_files(self.settings.resolved_adapter_dir, topic_id)
        log.info("topic %s forgotten (%d versions)", name, forgotten["versions"])
        return forgotten

    def jobs(self, limit: int, status: str | None) -> list[JobResponse]:
        with self.db.session() as session:
            query = select(Job, Topic.name).join(Topic).order_by(Job.created_at.desc()).limit(limit)
            if status is not None:
                query = query.where(Job.status == status)
            return [job_response(job, topic) for job, topic in session.execute(query).all()]

    @staticmethod
    def _topic(session: Any, name: str) -> Topic:
        topic = session.scalars(select(Topic).where(Topic.name == name)).one_or_none()
        if topic is None:
            raise not_found("topic")
        return topic
