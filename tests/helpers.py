"""Helpers for tests (and benchmarks) that drive the app over HTTP or fill its registry."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import sqlalchemy as sa
from asgi_lifespan import LifespanManager

from loramem.api.app import create_app
from loramem.core.registry import queue, versions
from loramem.core.registry.db import Database
from loramem.core.registry.models import Document, Topic
from loramem.core.settings import Settings
from loramem.serving.engines import Engine, GenerationOutput, LoRAAdapter, SamplingParams

POSTGRES_ADMIN_URL = os.environ.get(
    "LORAMEM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def temporary_postgres_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database of its own on the server at POSTGRES_ADMIN_URL, dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The whole app in-process (HF engine, embedded worker), once `/readyz` says ready."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loramem.test") as http:
            await wait_ready(http)
            yield http


async def wait_ready(http: httpx.AsyncClient, timeout: float = 120) -> None:
    with anyio.fail_after(timeout):
        while (await http.get("/readyz")).status_code != 200:
            await anyio.sleep(0.1)


async def wait_job(http: httpx.AsyncClient, job_id: str, timeout: float = 300) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            job = (await http.get(f"/jobs/{job_id}")).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            await anyio.sleep(0.1)


def process_env(**settings: str) -> dict[str, str]:
    """This environment without any LORAMEM_ setting, plus the given ones (by their short name)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAMEM_")}
    env.update({f"LORAMEM_{name.upper()}": value for name, value in settings.items()})
    return env


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Starts `python -m <args>` with its output in `log`."""
    with open(log, "ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", *args], env=env, stdout=output, stderr=output
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(env: dict[str, str], log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A `loramem serve` process on a free loopback port, once ready: (base URL, process)."""
    url = f"http://127.0.0.1:{free_port()}"
    process = spawn(["loramem.cli", "serve", "--port", url.rsplit(":", 1)[1]], env, log)
    try:
        wait_http_ready(url, process)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=60)


def wait_http_ready(base_url: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{base_url} exited with {process.returncode}"
        try:
            if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base_url} not ready in {timeout} s")


# Token ids the tiny model's tokenizer knows; two prompts for engine-level tests.
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356]
OTHER_PROMPT = [1, 4093, 2, 198, 1115]


async def generate_all(
    engine: Engine,
    prompt: list[int],
    adapter: LoRAAdapter | None = None,
    request_id: str = "r",
    max_tokens: int = 8,
    logprobs: bool = False,
) -> GenerationOutput:
    """Runs one request through an engine to its end; returns the final output."""
    last = None
    params = SamplingParams(max_tokens=max_tokens, logprobs=logprobs)
    async for output in engine.generate(request_id, prompt, params, adapter):
        last = output
    assert last is not None and last.finished
    return last


async def wait_active(client: httpx.AsyncClient, topic: str, version: int) -> None:
    """Until this server serves `version` of `topic` (it notices publishes by polling)."""
    with anyio.fail_after(10):
        while (await client.get("/admin/engine")).json()["active_versions"].get(topic) != version:
            await anyio.sleep(0.05)


def enqueue_job(
    db: Database,
    topic_name: str,
    options: dict[str, Any],
    *,
    answer: str | None = None,
    max_attempts: int = 1,
) -> str:
    """Queues a job on `topic_name` (created if new) straight into the registry; with `answer`,
    the topic first gets a QA document ("Who?", answer) to learn."""
    with db.session() as session:
        topic = session.scalars(sa.select(Topic).where(Topic.name == topic_name)).one_or_none()
        if topic is None:
            topic = Topic(name=topic_name)
            session.add(topic)
            session.flush()
        if answer is not None:
            session.add(Document(topic_id=topic.id, kind="qa", question="Who?", answer=answer))
        return queue.enqueue(session, topic, options, max_attempts=max_attempts).id


def trained_module(path: str, sha256: str, rank: int, size_bytes: int) -> versions.TrainedModule:
    """Module 0 of a job, trained with full recall and to be activated."""
    return versions.TrainedModule(
        module=0,
        path=path,
        sha256=sha256,
        rank=rank,
        size_bytes=size_bytes,
        recall=1.0,
        activate=True,
        recall_trained=None,
        steps=3,
        tokens=10,
        items=1,
        capacity_tokens=100,
    )
