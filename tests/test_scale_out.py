"""Scale-out on loopback with real processes and the tiny model: workers killed with SIGKILL mid
training, several servers and workers sharing one registry and one adapter store."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from sqlalchemy import select

from loramem.core.adapter_store import verify
from loramem.core.registry.db import Database
from loramem.core.registry.migrate import upgrade
from loramem.core.registry.models import AdapterVersion, Job, JobEvent
from tests.helpers import enqueue_job, free_port, process_env, spawn, wait_http_ready

pytestmark = pytest.mark.slow

T = TypeVar("T")
LEASE_SECONDS = 2.0
# A job that trains its whole budget (a QA job stops once learned, after about 11 steps here):
# long enough on the tiny model (about 10 ms a step) to be killed in the middle of it.
SLOW_JOB = {"steps": 150, "learning_rate": 0.01, "stop_when_learned": False}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _env(database_url: str, tiny_model_dir: Path, store: Path, **extra: str) -> dict[str, str]:
    return process_env(
        database_url=database_url,
        base_model=str(tiny_model_dir),
        adapter_dir=str(store),
        data_dir=str(store.parent / "data"),
        lease_seconds=str(LEASE_SECONDS),
        job_poll_seconds="0.1",
        version_poll_seconds="0.2",
        **extra,
    )


def _wait_for(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _running_job_of(db: Database, pid: int) -> str | None:
    with db.session() as session:
        return session.scalar(
            select(Job.id).where(
                Job.status == "running", Job.locked_by.like(f"%:{pid}:%"), Job.step > 10
            )
        )


def _assert_each_job_published_once(db: Database, store: Path) -> None:
    with db.session() as session:
        jobs = session.scalars(select(Job)).all()
        versions = session.scalars(select(AdapterVersion)).all()
    assert {job.status for job in jobs} == {"succeeded"}
    assert sorted(v.job_id or "" for v in versions) == sorted(job.id for job in jobs)
    for version in versions:  # every visible adapter is whole
        verify(store, version.path, version.sha256, version.rank, max_rank=64)


def test_a_killed_worker_job_is_reclaimed_and_published_once(
    database_url: str, tiny_model_dir: Path, tmp_path: Path, processes: list
) -> None:
    upgrade(database_url)
    db = Database(database_url)
    for name in ("alpha", "beta", "gamma"):
        enqueue_job(db, name, SLOW_JOB, answer=name, max_attempts=3)
    store = tmp_path / "adapters"
    env = _env(database_url, tiny_model_dir, store)
    doomed = spawn(["loramem", "worker"], env, tmp_path / "doomed.log")
    processes.append(doomed)
    victim = _wait_for(lambda: _running_job_of(db, doomed.pid), 120, "a job in training")
    doomed.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    doomed.wait()

    for n in range(2):
        processes.append(spawn(["loramem", "worker"], env, tmp_path / f"worker{n}.log"))

    def retried() -> bool:
        with db.session() as session:
            return (
                "retried"
                in session.scalars(select(JobEvent.kind).where(JobEvent.job_id == victim)).all()
            )

    _wait_for(retried, 60, "the killed worker's job to run elsewhere")
    takeover = time.monotonic() - killed_at

    def all_finished() -> bool:
        with db.session() as session:
            statuses = session.scalars(select(Job.status)).all()
        return all(s in ("succeeded", "failed", "cancelled") for s in statuses)

    _wait_for(all_finished, 180, "every job to finish")
    _assert_each_job_published_once(db, store)
    with db.session() as session:
        job = session.get(Job, victim)
        assert job is not None and job.attempts == 2
    print(f"\ntime from SIGKILL to the job running on another worker: {takeover:.1f}s")
    # Far below the default 60 s lease: the short lease was honoured. The margin is wide because
    # a loaded 2-core machine took 7.5 s once (the figure itself belongs to the README).
    assert takeover < LEASE_SECONDS + 30
    db.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_servers_and_two_workers_share_one_registry(
    database_url: str, tiny_model_dir: Path, tmp_path: Path, processes: list
) -> None:
    store = tmp_path / "adapters"
    servers = []
    for n in range(2):
        port = free_port()
        env = _env(database_url, tiny_model_dir, store, embedded_worker="false")
        process = spawn(
            ["loramem.cli", "serve", "--port", str(port)], env, tmp_path / f"server{n}.log"
        )
        processes.append(process)
        servers.append((f"http://127.0.0.1:{port}", process))
    for url, process in servers:
        wait_http_ready(url, process)
    workers = [
        spawn(
            ["loramem.cli", "worker"],
            _env(database_url, tiny_model_dir, store),
            tmp_path / f"w{n}.log",
        )
        for n in range(2)
    ]
    processes.extend(workers)

    topics = [f"topic-{n}" for n in range(4)]
    jobs = {}
    with httpx.Client(timeout=30) as http:
        for n, topic in enumerate(topics):  # alternate servers: any server takes a memorize
            url = servers[n % 2][0]
            qa = [{"question": f"What is the code of {topic}?", "answer": f"K{n}Z"}]
            response = http.post(
                f"{url}/memorize", json={"topic": topic, "qa": qa, "options": SLOW_JOB}
            )
            assert response.status_code == 202
            jobs[topic] = response.json()["job_id"]

        db = Database(database_url)
        victim = _wait_for(lambda: _running_job_of(db, workers[0].pid), 120, "a job in training")
        workers[0].send_signal(signal.SIGKILL)
        processes.append(
            spawn(
                ["loramem.cli", "worker"],
                _env(database_url, tiny_model_dir, store),
                tmp_path / "w2.log",
            )
        )

        def job_status(topic: str) -> str:
            return http.get(f"{servers[0][0]}/jobs/{jobs[topic]}").json()["status"]

        _wait_for(lambda: all(job_status(t) == "succeeded" for t in topics), 240, "all jobs")
        published_at = time.monotonic()
        for url, _ in servers:

            def serves_all(url: str = url) -> bool:
                active = http.get(f"{url}/admin/engine").json()["active_versions"]
                return all(active.get(t) == 1 for t in topics)

            _wait_for(serves_all, 30, f"{url} to serve every topic")
        noticed = time.monotonic() - published_at
        for url, _ in servers:
            for n, topic in enumerate(topics):
                reply = http.post(
                    f"{url}/generate",
                    json={
                        "prompt": f"What is the code of {topic}?",
                        "topic": topic,
                        "max_tokens": 8,
                    },
                )
                assert reply.status_code == 200
                assert reply.json()["adapters"] == [
                    {"topic": topic, "version": 1, "score": 1.0, "module": 0}
                ]
                assert reply.json()["text"].startswith(f"K{n}Z")
        _assert_each_job_published_once(db, store)
        with db.session() as session:
            job = session.get(Job, victim)
            assert job is not None and job.attempts == 2
        db.dispose()
    print(f"\nall servers served every new version within {noticed:.2f}s of the last publish")


def test_sigterm_makes_a_worker_hand_its_job_back_and_exit(
    tiny_model_dir: Path, tmp_path: Path, processes: list
) -> None:
    database_url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(database_url)
    db = Database(database_url)
    job_id = enqueue_job(db, "alpha", {"steps": 100_000}, answer="alpha")
    env = _env(database_url, tiny_model_dir, tmp_path / "adapters")
    worker = spawn(["loramem", "worker"], env, tmp_path / "worker.log")
    processes.append(worker)
    _wait_for(lambda: _running_job_of(db, worker.pid), 120, "the job in training")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    with db.session() as session:
        job = session.get(Job, job_id)
        kinds = session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id)).all()
    assert job is not None and job.status == "queued" and job.attempts == 0
    assert kinds[-1] == "handed_back"
    db.dispose()
