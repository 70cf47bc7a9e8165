"""Admin: the dashboard page and its JSON API (topics, versions, jobs, the engine, activity)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from server.base_model import training_precision
from server.dependencies import State, require_admin_key
from server.errors import APIError
from server.schemas import JobResponse, TopicName
from server.services.topics import TopicService

STATIC = Path(__file__).resolve().parent.parent / "static"

# The page holds no data and asks for the admin key itself; everything it shows comes from the
# JSON routes below, which need the key.
page = APIRouter(tags=["admin"])
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


@page.get("/admin", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(STATIC / "admin.html", headers={"Cache-Control": "no-store"})


def get_topics(state: State) -> TopicService:
    return TopicService(state.settings, state.db)


Topics = Annotated[TopicService, Depends(get_topics)]


class ActivateRequest(BaseModel):
    version: int = Field(ge=1)


async def _refresh_routes(state: Any) -> None:
    """Apply a change to this server at once; other servers notice it at their next poll."""
    if state.router is not None:
        await state.router.refresh()
    if state.index_refresher is not None:
        await asyncio.to_thread(state.index_refresher.refresh)


@router.get("/topics")
async def list_topics(topics: Topics) -> dict[str, Any]:
    return {"topics": await asyncio.to_thread(topics.summaries)}


@router.get("/topics/{name}")
async def get_topic(name: TopicName, topics: Topics) -> dict[str, Any]:
    return await asyncio.to_thread(topics.detail, name)


@router.post("/topics/{name}/activate")
async def activate(
    name: TopicName, body: ActivateRequest, topics: Topics, state: State
) -> dict[str, Any]:
    detail = await asyncio.to_thread(topics.activate, name, body.version)
    await _refresh_routes(state)
    return detail


@router.delete("/topics/{name}")
async def forget(name: TopicName, topics: Topics, state: State) -> dict[str, Any]:
    forgotten = await asyncio.to_thread(topics.forget, name)
    await _refresh_routes(state)
    return forgotten


@router.get("/jobs")
async def list_jobs(
    topics: Topics, limit: int = Query(50, ge=1, le=500), status: str | None = None
) -> dict[str, list[JobResponse]]:
    return {"jobs": await asyncio.to_thread(topics.jobs, limit, status)}


@router.get("/engine")
async def engine(state: State) -> dict[str, Any]:
    if state.engine is None:
        raise APIError(503, "the engine is still starting", headers={"Retry-After": "5"})
    active = state.router.active() if state.router else {}
    return {
        **state.engine.describe(),
        "base_model": state.settings.base_model,
        "train_precision": training_precision(state.settings),
        # Per topic, its newest active version; per module in active_modules.
        "active_versions": {
            topic: max(a.version for (name, _), a in active.items() if name == topic)
            for topic, _ in sorted(active)
        },
        "active_modules": {
            f"{topic}/{module}": a.version for (topic, module), a in sorted(active.items())
        },
        "memory_rss_bytes": _rss_bytes(),
    }


@router.get("/activity")
async def activity(state: State) -> dict[str, Any]:
    return state.requests.snapshot()


def _rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
