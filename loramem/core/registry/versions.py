"""Publishing a job's trained modules as adapter versions: one transaction, fenced by the job's
lease, that records the versions, activates those that passed their recall threshold, assigns the
new documents to their modules and completes the job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update

from loramem.core.registry.db import Database
from loramem.core.registry.models import (
    AdapterVersion,
    Document,
    Job,
    JobStatus,
    Module,
    Topic,
    utcnow,
)
from loramem.core.registry.queue import LeaseLost, fenced, record_event

log = logging.getLogger("loramem.queue")


@dataclass(frozen=True)
class PublishedVersion:
    version: int
    activated: bool


@dataclass(frozen=True)
class TrainedModule:
    """A module the job trained: its new adapter and its knowledge load."""

    module: int
    path: str
    sha256: str
    rank: int
    size_bytes: int
    recall: float
    activate: bool
    # Recall on the generated questions it was trained on (None: it had none).
    recall_trained: float | None
    # Optimizer steps it took: fewer than its budget where it stopped once learned.
    steps: int
    tokens: int
    items: int
    capacity_tokens: int


def publish_versions(
    db: Database,
    job_id: str,
    worker_id: str,
    trained: list[TrainedModule],
    *,
    assignments: dict[int, int] | None = None,
    note: str | None = None,
    details: dict[str, Any] | None = None,
) -> list[PublishedVersion]:
    """Records one version a trained module, the module each new document went to, and completes
    the job, in one transaction fenced by the lease: all of it or nothing."""
    now = utcnow()
    published: list[PublishedVersion] = []
    with db.session(immediate=True) as session:
        job = session.scalars(
            select(Job).where(fenced(job_id, worker_id)).with_for_update()
        ).one_or_none()
        if job is None:
            raise LeaseLost(job_id)
        topic = session.scalars(
            select(Topic).where(Topic.id == job.topic_id).with_for_update()
        ).one()
        latest = session.scalar(
            select(func.max(AdapterVersion.version)).where(AdapterVersion.topic_id == topic.id)
        )
        modules = {
            m.number: m
            for m in session.scalars(select(Module).where(Module.topic_id == topic.id)).all()
        }
        version = latest or 0
        for result in trained:
            version += 1
            session.add(
                AdapterVersion(
                    topic_id=topic.id,
                    version=version,
                    module=result.module,
                    path=result.path,
                    sha256=result.sha256,
                    rank=result.rank,
                    size_bytes=result.size_bytes,
                    recall=result.recall,
                    job_id=job_id,
                )
            )
            module = modules.get(result.module)
            if module is None:
                module = Module(topic_id=topic.id, number=result.module)
                session.add(module)
            module.tokens, module.items = result.tokens, result.items
            module.capacity_tokens = result.capacity_tokens
            if result.activate:
                module.active_version = version
            published.append(PublishedVersion(version, result.activate))
        for document_id, number in (assignments or {}).items():
            session.execute(
                update(Document)
                .where(Document.id == document_id, Document.topic_id == topic.id)
                .values(module=number)
            )
        topic.updated_at = now
        recall = min(r.recall for r in trained)
        activated = all(r.activate for r in trained)
        job.status = JobStatus.SUCCEEDED
        job.adapter_version = version
        job.recall = recall
        job.activated = activated
        job.progress = 1.0
        job.step = sum(r.steps for r in trained)
        job.finished_at = now
        job.locked_by = None
        job.error = note
        record_event(
            session,
            job_id,
            "succeeded",
            version=version,
            recall=recall,
            activated=activated,
            modules=[
                {
                    "module": r.module,
                    "version": p.version,
                    "recall": r.recall,
                    "recall_trained": r.recall_trained,
                    "steps": r.steps,
                    "activated": p.activated,
                }
                for r, p in zip(trained, published, strict=True)
            ],
            **(details or {}),
        )
    log.info(
        "job %s succeeded topic=%s versions=%s recall=%.3f activated=%s",
        job_id,
        topic.name,
        ",".join(
            f"{p.version}(module {r.module})" for r, p in zip(trained, published, strict=True)
        ),
        recall,
        activated,
    )
    return published
