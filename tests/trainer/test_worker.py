"""The worker loop on the tiny model: a job end to end, and a stop in the middle of training."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import select

from loramem.core.registry import queue
from loramem.core.registry.db import Database
from loramem.core.registry.migrate import upgrade
from loramem.core.registry.models import Job, Topic
from loramem.core.settings import Settings
from loramem.trainer.worker import TrainerWorker
from tests.helpers import enqueue_job


def _setup(settings: Settings, steps: int) -> tuple[Database, str]:
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    return db, enqueue_job(db, "acme", {"steps": steps}, answer="Quiggle")


def test_worker_trains_and_publishes_one_version(settings: Settings) -> None:
    db, job_id = _setup(settings, steps=3)
    worker = TrainerWorker(settings, db)
    assert worker.run_once() is True
    assert worker.run_once() is False
    with db.session() as session:
        job = session.get(Job, job_id)
        topic = session.scalars(select(Topic)).one()
        assert job is not None and job.status == "succeeded" and job.step == 3
        assert topic.active_version == 1 and len(topic.versions) == 1
        folder = settings.resolved_adapter_dir / topic.versions[0].path
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    db.dispose()


def test_a_stopping_worker_hands_back_its_job_mid_training(settings: Settings) -> None:
    db, job_id = _setup(settings, steps=100_000)
    stop = threading.Event()
    worker = TrainerWorker(settings, db)
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    assert _wait(lambda: _job(db, job_id).step > 0)
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.attempts == 0
        assert 0 < job.step < 100_000
        assert session.scalars(select(Topic)).one().versions == []
    assert not list(settings.resolved_adapter_dir.glob("*/*"))
    db.dispose()


def test_an_unwritable_adapter_store_fails_the_job_before_training(settings: Settings) -> None:
    blocked = settings.data_dir / "not-a-folder"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the adapter store should be")
    settings = settings.model_copy(update={"adapter_dir": blocked})
    db, job_id = _setup(settings, steps=100_000)
    TrainerWorker(settings, db).run_once()
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.step == 0
        assert job.error == "the adapter store is not writable (NotADirectoryError)"
    db.dispose()


def test_knowledge_beyond_the_training_memory_bound_fails_the_job_with_the_limit(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"train_memory_gb": 1e-6})
    db, job_id = _setup(settings, steps=10)
    TrainerWorker(settings, db).run_once()
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.step == 0
        assert job.error is not None
        assert "training memory bound" in job.error and "LORAMEM_TRAIN_MEMORY_GB" in job.error
    db.dispose()


def test_cancelling_a_running_job_stops_its_training(settings: Settings) -> None:
    db, job_id = _setup(settings, steps=100_000)
    stop = threading.Event()
    thread = threading.Thread(target=TrainerWorker(settings, db).run, args=(stop,))
    thread.start()
    try:
        assert _wait(lambda: _job(db, job_id).step > 0)
        with db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            queue.cancel(session, job)
            topic = session.scalars(select(Topic)).one()
            next_job = queue.enqueue(session, topic, {"steps": 2}, max_attempts=1).id
        # The worker can only get to the next job by dropping the 100 000-step one.
        assert _wait(lambda: _job(db, next_job).status == "succeeded")
    finally:
        stop.set()
        thread.join(timeout=60)
    cancelled = _job(db, job_id)
    assert cancelled.status == "cancelled" and cancelled.adapter_version is None
    with db.session() as session:
        versions = session.scalars(select(Topic)).one().versions
        assert [v.job_id for v in versions] == [next_job]
    db.dispose()


def _job(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _wait(predicate: Callable[[], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_worker_that_waits_for_its_engine_claims_nothing_before_it_is_ready(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"job_poll_seconds": 0.05})
    db, job_id = _setup(settings, steps=2)
    ready, stop = threading.Event(), threading.Event()
    worker = TrainerWorker(settings, db, ready=ready.is_set)
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    time.sleep(0.5)
    assert _job(db, job_id).status == "queued" and _job(db, job_id).attempts == 0
    ready.set()
    assert _wait(lambda: _job(db, job_id).status == "succeeded")
    stop.set()
    thread.join(timeout=60)
    db.dispose()
