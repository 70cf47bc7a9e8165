"""The training queue: enqueue, claim with a lease, heartbeat, fenced failure, cancel (a job's
success is its publication: `loramem.core.registry.versions`).

Delivery is at-least-once. A worker claims a job atomically and holds it by a lease that its
heartbeats renew; a job whose lease expired is claimable again. Every write a worker makes about its
job is fenced (`WHERE id=? AND locked_by=? AND status='running'`), so a worker that lost its lease
(or whose job was cancelled) can neither report progress nor publish.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from loramem.core.registry.db import Database
from loramem.core.registry.models import (
    GeneratedRecord,
    Job,
    JobEvent,
    JobStatus,
    Topic,
    utcnow,
)

log = logging.getLogger("loramem.queue")

FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class LeaseLost(Exception):
    """The job is no longer this worker's: its lease was taken over, or it was cancelled."""


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    topic_id: str
    topic_name: str
    options: dict[str, Any]
    attempt: int


def record_event(session: Session, job_id: str, kind: str, **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


def enqueue(
    session: Session,
    topic: Topic,
    options: dict[str, Any],
    *,
    max_attempts: int,
    idempotency_key: str | None = None,
) -> Job:
    job = Job(
        topic_id=topic.id,
        options=options,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        status=JobStatus.QUEUED,
    )
    session.add(job)
    session.flush()
    record_event(session, job.id, "queued")
    log.info("job %s queued topic=%s", job.id, topic.name)
    return job


def _claimable(now: datetime) -> Any:
    waiting = and_(Job.status == JobStatus.QUEUED, or_(Job.retry_at.is_(None), Job.retry_at <= now))
    expired = and_(
        Job.status == JobStatus.RUNNING,
        Job.lease_expires_at < now,
        Job.attempts < Job.max_attempts,
    )
    return or_(waiting, expired)


def claim(db: Database, worker_id: str, lease_seconds: float) -> ClaimedJob | None:
    """Atomically takes the oldest claimable job, or returns None.

    One statement serves both backends: PostgreSQL locks the candidate row with
    FOR UPDATE SKIP LOCKED; SQLite (where SQLAlchemy drops FOR UPDATE) runs the compare-and-set
    UPDATE ... RETURNING inside BEGIN IMMEDIATE, which holds the database's write lock.
    """
    now = utcnow()
    candidate = (
        select(Job.id)
        .where(_claimable(now))
        .order_by(Job.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        update(Job)
        .where(Job.id == candidate, _claimable(now))
        .values(
            status=JobStatus.RUNNING,
            locked_by=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            retry_at=None,
            started_at=func.coalesce(Job.started_at, now),
            error=None,
        )
        .returning(Job.id, Job.topic_id, Job.options, Job.attempts)
        .execution_options(synchronize_session=False)
    )
    with db.session(immediate=True) as session:
        row = session.execute(statement).one_or_none()
        if row is None:
            _fail_exhausted(session, now)
            return None
        topic_name = session.scalar(select(Topic.name).where(Topic.id == row.topic_id)) or ""
        kind = "claimed" if row.attempts == 1 else "retried"
        record_event(session, row.id, kind, worker=worker_id, attempt=row.attempts)
    log.info("job %s %s by %s attempt=%d", row.id, kind, worker_id, row.attempts)
    return ClaimedJob(row.id, row.topic_id, topic_name, dict(row.options or {}), row.attempts)


def _fail_exhausted(session: Session, now: datetime) -> None:
    """Jobs whose worker died on their last attempt end failed instead of waiting forever.

    Idle claimers sweep for them: they are never claimable, so nothing else waits on them.
    """
    exhausted = session.scalars(
        update(Job)
        .where(
            Job.status == JobStatus.RUNNING,
            Job.lease_expires_at < now,
            Job.attempts >= Job.max_attempts,
        )
        .values(
            status=JobStatus.FAILED,
            finished_at=now,
            locked_by=None,
            error=func.coalesce(Job.error, "the worker stopped responding on the last attempt"),
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).all()
    for job_id in exhausted:
        record_event(session, job_id, "failed", error="lease expired on the last attempt")
        log.info("job %s failed: lease expired on the last attempt", job_id)


def fenced(job_id: str, worker_id: str) -> Any:
    return and_(Job.id == job_id, Job.locked_by == worker_id, Job.status == JobStatus.RUNNING)


def heartbeat(
    db: Database,
    job_id: str,
    worker_id: str,
    lease_seconds: float,
    *,
    step: int,
    total_steps: int,
    loss: float | None,
    event: bool = False,
) -> None:
    """Renews the lease and records progress; raises LeaseLost when the job is no longer ours."""
    now = utcnow()
    with db.session() as session:
        updated = session.execute(
            update(Job)
            .where(fenced(job_id, worker_id))
            .values(
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                heartbeat_at=now,
                step=step,
                total_steps=total_steps,
                progress=step / total_steps if total_steps else 0.0,
                loss=loss,
            )
            .execution_options(synchronize_session=False)
        )
        if updated.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLost(job_id)
        if event:
            record_event(session, job_id, "progress", step=step, total_steps=total_steps, loss=loss)


def store_generated(
    db: Database, job_id: str, worker_id: str, rows: list[GeneratedRecord], **event: Any
) -> None:
    """Keeps training data a generator wrote, if the job is still ours."""
    with db.session(immediate=True) as session:
        if session.scalar(select(Job.id).where(fenced(job_id, worker_id))) is None:
            raise LeaseLost(job_id)
        session.add_all(rows)
        record_event(session, job_id, "augmented", **event)


def fail(
    db: Database,
    job_id: str,
    worker_id: str,
    error: str,
    *,
    retry: bool,
    retry_delay_seconds: float = 0.0,
) -> None:
    """Gives the job back, to be retried while attempts remain, or ends it failed. A retry waits
    `retry_delay_seconds`, doubled for each attempt already made: what failed at once (a model
    still loading, a database restarting, memory taken by another job) has time to pass instead
    of failing every attempt within a second."""
    now = utcnow()
    with db.session() as session:
        job = session.scalars(select(Job).where(fenced(job_id, worker_id))).one_or_none()
        if job is None:
            return
        job.error = error
        job.locked_by = None
        job.lease_expires_at = None
        if retry and job.attempts < job.max_attempts:
            delay = retry_delay_seconds * 2 ** (job.attempts - 1)
            job.status = JobStatus.QUEUED
            job.retry_at = now + timedelta(seconds=delay)
            record_event(
                session, job_id, "released", error=error, attempt=job.attempts, retry_in=delay
            )
            log.info(
                "job %s released for retry in %.0fs attempt=%d: %s",
                job_id,
                delay,
                job.attempts,
                error,
            )
        else:
            job.status = JobStatus.FAILED
            job.finished_at = now
            record_event(session, job_id, "failed", error=error, attempt=job.attempts)
            log.info("job %s failed attempt=%d: %s", job_id, job.attempts, error)


def hand_back(db: Database, job_id: str, worker_id: str) -> None:
    """A stopping worker returns its job to the queue; the attempt does not count."""
    with db.session() as session:
        job = session.scalars(select(Job).where(fenced(job_id, worker_id))).one_or_none()
        if job is None:
            return
        job.status = JobStatus.QUEUED
        job.attempts = max(job.attempts - 1, 0)
        job.locked_by = None
        job.lease_expires_at = None
        record_event(session, job_id, "handed_back", worker=worker_id)
    log.info("job %s handed back by stopping worker %s", job_id, worker_id)


def cancel(session: Session, job: Job) -> None:
    """Queued jobs end at once; a running one ends when its worker's next heartbeat is refused."""
    if job.status in FINISHED:
        return
    job.status = JobStatus.CANCELLED
    job.finished_at = utcnow()
    job.locked_by = None
    record_event(session, job.id, "cancelled")
    log.info("job %s cancelled", job.id)


def count_by_status(db: Database) -> dict[str, int]:
    """Jobs by state, in one query (the metrics' scrape)."""
    with db.session() as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {str(status): count for status, count in rows}
