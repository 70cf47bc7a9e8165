"""Claim throughput of the training queue: jobs claimed per second by 8 competing claimer
processes (no training), beside 1 claimer on the same backend in the same run.

    .venv/bin/python -m bench.claim_throughput [--jobs 400] [--claimers 8]

Runs on SQLite (a temporary file) and on PostgreSQL (a temporary database at
LORAMEM_TEST_POSTGRES_URL, default postgres@127.0.0.1:5432); writes bench/results/claims.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select

from bench.common import ratio, save
from loramem.core.registry import queue
from loramem.core.registry.db import Database
from loramem.core.registry.migrate import upgrade
from loramem.core.registry.models import Topic
from tests.helpers import temporary_postgres_database


@contextmanager
def database(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/claims.db"
        return
    with temporary_postgres_database("loramem_bench") as url:
        yield url


def _fill(url: str, jobs: int) -> None:
    upgrade(url)
    db = Database(url)
    with db.session() as session:
        topic = Topic(name="bench")
        session.add(topic)
        session.flush()
        for _ in range(jobs):
            queue.enqueue(session, topic, {}, max_attempts=1)
    db.dispose()


def _claim_all(url: str, worker: str, ready: Any, start: Any) -> list[str]:
    db = Database(url)
    with db.session() as session:  # connected before the clock starts
        session.execute(select(1))
    ready.wait()
    start.wait()
    claimed = []
    while (job := queue.claim(db, worker, lease_seconds=600)) is not None:
        claimed.append(job.id)
    db.dispose()
    return claimed


def measure(url: str, jobs: int, claimers: int) -> float:
    _fill(url, jobs)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        ready, start = manager.Barrier(claimers + 1), manager.Event()
        with context.Pool(claimers) as pool:
            results = [
                pool.apply_async(_claim_all, (url, f"w{n}", ready, start)) for n in range(claimers)
            ]
            ready.wait()  # every process started, imported and connected
            began = time.perf_counter()
            start.set()
            claimed = [job for result in results for job in result.get(timeout=600)]
            elapsed = time.perf_counter() - began
    assert len(claimed) == len(set(claimed)) == jobs, "a job was claimed twice or lost"
    return jobs / elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--claimers", type=int, default=8)
    args = parser.parse_args(argv)
    results = {}
    for backend in ("sqlite", "postgresql"):
        rates = {}
        for claimers in (1, args.claimers):
            with database(backend) as url:
                rates[claimers] = measure(url, args.jobs, claimers)
        results[backend] = {
            "claims_per_s": rates,
            "ratio": ratio(
                f"{backend} claims/s {args.claimers} claimers/1 claimer",
                rates[args.claimers],
                rates[1],
            ),
        }
    save("claims", results)
    return results


if __name__ == "__main__":
    main()
