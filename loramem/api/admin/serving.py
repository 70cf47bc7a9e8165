"""Topics for operators: list, inspect, roll back to a version, forget; the job list."""

from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from loramem.api.admin.protocol import (
    Forgotten,
    GeneratedItemView,
    KnowledgeModule,
    StoredDocument,
    TopicDetail,
    TopicSummary,
    VersionView,
)
from loramem.api.memorize.protocol import JobResponse
from loramem.api.memorize.serving import job_response
from loramem.core.adapter_store import remove_adapter_files
from loramem.core.errors import NotFound
from loramem.core.registry.db import Database
from loramem.core.registry.models import (
    AdapterVersion,
    Document,
    GeneratedRecord,
    Job,
    Topic,
    utcnow,
)
from loramem.core.settings import Settings

log = logging.getLogger("loramem.topics")


def _active_recall(topic: Topic) -> float | None:
    active = next((v for v in topic.versions if v.version == topic.active_version), None)
    return active.recall if active else None


def _version(version: AdapterVersion, active: set[int | None]) -> VersionView:
    return VersionView(
        version=version.version,
        module=version.module,
        active=version.version in active,
        recall=version.recall,
        rank=version.rank,
        sha256=version.sha256,
        size_bytes=version.size_bytes,
        job_id=version.job_id,
        created_at=version.created_at,
    )


class TopicService:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    def summaries(self) -> list[TopicSummary]:
        with self.db.session() as session:
            counts = dict(
                session.execute(
                    select(Document.topic_id, func.count()).group_by(Document.topic_id)
                ).all()
            )
            topics = session.scalars(select(Topic).order_by(Topic.name)).all()
            return [
                TopicSummary(
                    name=topic.name,
                    active_version=topic.active_version,
                    active_recall=_active_recall(topic),
                    versions=len(topic.versions),
                    documents=counts.get(topic.id, 0),
                    modules=len(topic.modules),
                    created_at=topic.created_at,
                    updated_at=topic.updated_at,
                )
                for topic in topics
            ]

    def detail(self, name: str) -> TopicDetail:
        with self.db.session() as session:
            topic = self._topic(session, name)
            active = {m.active_version for m in topic.modules}
            return TopicDetail(
                name=topic.name,
                active_version=topic.active_version,
                active_recall=_active_recall(topic),
                modules=len(topic.modules),
                created_at=topic.created_at,
                updated_at=topic.updated_at,
                documents=[
                    StoredDocument(
                        id=d.id,
                        kind=d.kind,
                        question=d.question,
                        answer=d.answer,
                        text=d.text,
                        module=d.module,
                    )
                    for d in topic.documents
                ],
                generated=[
                    GeneratedItemView(
                        id=g.id,
                        document_id=g.document_id,
                        generator=g.generator,
                        kind=g.kind,
                        question=g.question,
                        answer=g.answer,
                        text=g.text,
                        held_out=g.held_out,
                        source=g.source,
                        kept=g.rejected is None,
                        rejected=g.rejected,
                    )
                    for g in topic.generated
                ],
                knowledge_modules=[
                    KnowledgeModule(
                        module=m.number,
                        active_version=m.active_version,
                        tokens=m.tokens,
                        items=m.items,
                        capacity_tokens=m.capacity_tokens,
                    )
                    for m in topic.modules
                ],
                versions=[_version(v, active) for v in topic.versions],
            )

    def activate(self, name: str, version: int) -> TopicDetail:
        """Serves `version` again for its module (a rollback, or a version kept below the recall
        threshold)."""
        with self.db.session(immediate=True) as session:
            topic = self._topic(session, name)
            chosen = next((v for v in topic.versions if v.version == version), None)
            if chosen is None:
                raise NotFound(f"version {version} of topic '{name}'", param="version")
            module = next(m for m in topic.modules if m.number == chosen.module)
            module.active_version = version
            topic.updated_at = utcnow()
        log.info("topic %s activated version %d", name, version)
        return self.detail(name)

    def forget(self, name: str) -> Forgotten:
        """Deletes the topic, its documents, generated data, versions and jobs, then its adapter
        files."""
        with self.db.session(immediate=True) as session:
            topic = self._topic(session, name)
            forgotten = Forgotten(
                topic=name,
                versions=len(topic.versions),
                documents=len(topic.documents),
                # Counted, not loaded: the database deletes them with their documents.
                generated=session.scalar(
                    select(func.count(GeneratedRecord.id)).where(
                        GeneratedRecord.topic_id == topic.id
                    )
                )
                or 0,
            )
            topic_id = topic.id
            session.delete(topic)
        # After the commit: a server that still serves the topic reads files it has loaded.
        remove_adapter_files(self.settings.resolved_adapter_dir, topic_id)
        log.info("topic %s forgotten (%d versions)", name, forgotten.versions)
        return forgotten

    def jobs(self, limit: int, status: str | None) -> list[JobResponse]:
        with self.db.session() as session:
            query = select(Job, Topic.name).join(Topic).order_by(Job.created_at.desc()).limit(limit)
            if status is not None:
                query = query.where(Job.status == status)
            return [job_response(job, topic) for job, topic in session.execute(query).all()]

    @staticmethod
    def _topic(session: Session, name: str) -> Topic:
        topic = session.scalars(select(Topic).where(Topic.name == name)).one_or_none()
        if topic is None:
            raise NotFound("topic")
        return topic
