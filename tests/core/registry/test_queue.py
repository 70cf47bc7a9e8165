"""The training queue on SQLite and PostgreSQL: claims, leases, fencing, cancel, retries."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from loramem.core.registry import queue, versions
from loramem.core.registry.db import Database
from loramem.core.registry.migrate import upgrade
from loramem.core.registry.models import AdapterVersion, Job, JobEvent, Topic, utcnow
from tests.helpers import enqueue_job, trained_module


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    upgrade(database_url)
    database = Database(database_url)
    yield database
    database.dispose()


def _enqueue(db: Database, topic_name: str = "acme", max_attempts: int = 3) -> str:
    return enqueue_job(db, topic_name, {"rank": 4}, max_attempts=max_attempts)


def _job(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _expire_lease(db: Database, job_id: str) -> None:
    with db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def _publish(db: Database, job_id: str, worker: str) -> versions.PublishedVersion:
    module = trained_module(f"t/{job_id}", "0" * 64, rank=4, size_bytes=1)
    [published] = versions.publish_versions(db, job_id, worker, [module])
    return published


def test_claim_takes_oldest_job_once(db: Database) -> None:
    first, second = _enqueue(db), _enqueue(db)
    claimed = queue.claim(db, "w1", lease_seconds=30)
    assert claimed is not None and claimed.id == first
    assert claimed.topic_name == "acme" and claimed.options == {"rank": 4}
    again = queue.claim(db, "w2", lease_seconds=30)
    assert again is not None and again.id == second
    assert queue.claim(db, "w3", lease_seconds=30) is None


def test_concurrent_claims_never_share_a_job(db: Database) -> None:
    jobs = {_enqueue(db, f"topic-{n}") for n in range(6)}
    claimed: list[str] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        while (job := queue.claim(db, worker, lease_seconds=30)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(jobs)


def test_expired_lease_is_reclaimed_and_the_old_owner_is_fenced_out(db: Database) -> None:
    job_id = _enqueue(db)
    assert queue.claim(db, "dead", lease_seconds=30) is not None
    assert queue.claim(db, "other", lease_seconds=30) is None  # lease still held
    _expire_lease(db, job_id)
    retried = queue.claim(db, "alive", lease_seconds=30)
    assert retried is not None and retried.id == job_id and retried.attempt == 2

    with pytest.raises(queue.LeaseLost):
        queue.heartbeat(db, job_id, "dead", 30, step=1, total_steps=2, loss=1.0)
    with pytest.raises(queue.LeaseLost):
        _publish(db, job_id, "dead")
    assert _publish(db, job_id, "alive").version == 1
    with pytest.raises(queue.LeaseLost):  # a retried job never publishes twice
        _publish(db, job_id, "alive")

    with db.session() as session:
        versions = session.scalars(select(AdapterVersion)).all()
        kinds = session.scalars(
            select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
    assert len(versions) == 1
    assert kinds == ["queued", "claimed", "retried", "succeeded"]
    job = _job(db, job_id)
    assert job.status == "succeeded" and job.adapter_version == 1 and job.locked_by is None


def test_versions_number_up_and_activate(db: Database) -> None:
    for expected in (1, 2):
        job_id = _enqueue(db)
        assert queue.claim(db, "w", lease_seconds=30) is not None
        assert _publish(db, job_id, "w").version == expected
    with db.session() as session:
        topic = session.scalars(select(Topic)).one()
        assert topic.active_version == 2


def test_heartbeat_records_progress(db: Database) -> None:
    job_id = _enqueue(db)
    queue.claim(db, "w", lease_seconds=30)
    queue.heartbeat(db, job_id, "w", 30, step=5, total_steps=20, loss=0.5, event=True)
    job = _job(db, job_id)
    assert (job.step, job.total_steps, job.progress, job.loss) == (5, 20, 0.25, 0.5)
    assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()


def test_cancel_running_job_stops_its_worker(db: Database) -> None:
    job_id = _enqueue(db)
    queue.claim(db, "w", lease_seconds=30)
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        queue.cancel(session, job)
    with pytest.raises(queue.LeaseLost):
        queue.heartbeat(db, job_id, "w", 30, step=1, total_steps=2, loss=None)
    assert _job(db, job_id).status == "cancelled"
    assert queue.claim(db, "w2", lease_seconds=30) is None


def test_failures_retry_then_fail_with_the_last_error(db: Database) -> None:
    job_id = _enqueue(db, max_attempts=2)
    for attempt in (1, 2):
        claimed = queue.claim(db, "w", lease_seconds=30)
        assert claimed is not None and claimed.attempt == attempt
        queue.fail(db, job_id, "w", f"boom {attempt}", retry=True)
    job = _job(db, job_id)
    assert job.status == "failed" and job.error == "boom 2" and job.finished_at is not None
    assert queue.claim(db, "w", lease_seconds=30) is None


def test_a_failed_attempt_is_retried_after_a_delay_that_doubles(db: Database) -> None:
    job_id = _enqueue(db, max_attempts=3)
    waits = []
    for attempt in (1, 2):
        assert queue.claim(db, "w", lease_seconds=30) is not None
        before = utcnow()
        queue.fail(db, job_id, "w", f"boom {attempt}", retry=True, retry_delay_seconds=60)
        job = _job(db, job_id)
        assert job.status == "queued" and job.retry_at is not None
        waits.append((job.retry_at - before).total_seconds())
        assert queue.claim(db, "eager", lease_seconds=30) is None  # not before its time
        with db.session() as session:  # its time comes
            session.execute(
                update(Job).where(Job.id == job_id).values(retry_at=utcnow() - timedelta(seconds=1))
            )
    assert waits[0] == pytest.approx(60, abs=5) and waits[1] == pytest.approx(120, abs=5)
    again = queue.claim(db, "w", lease_seconds=30)
    assert again is not None and again.attempt == 3 and _job(db, job_id).retry_at is None
    with db.session() as session:
        released = session.scalars(
            select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.kind == "released")
        ).all()
    assert [event["retry_in"] for event in released] == [60, 120]


def test_lease_expiring_on_the_last_attempt_fails_the_job(db: Database) -> None:
    job_id = _enqueue(db, max_attempts=1)
    queue.claim(db, "dead", lease_seconds=30)
    _expire_lease(db, job_id)
    assert queue.claim(db, "w", lease_seconds=30) is None
    job = _job(db, job_id)
    assert job.status == "failed" and "last attempt" in (job.error or "")


def test_a_stopping_worker_hands_its_job_back_without_using_an_attempt(db: Database) -> None:
    job_id = _enqueue(db, max_attempts=1)
    assert queue.claim(db, "stopping", lease_seconds=30) is not None
    queue.hand_back(db, job_id, "stopping")
    job = _job(db, job_id)
    assert job.status == "queued" and job.attempts == 0 and job.locked_by is None
    again = queue.claim(db, "next", lease_seconds=30)
    assert again is not None and again.id == job_id and again.attempt == 1
