"""Helpers for tests that drive the app over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from asgi_lifespan import LifespanManager

from server import Settings, create_app


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
