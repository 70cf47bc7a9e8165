"""Admin: the dashboard page and its JSON API (topics, versions, jobs, the engine, activity)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse

from loramem.api.admin.protocol import (
    ActivateRequest,
    Activity,
    EngineView,
    Forgotten,
    JobList,
    TopicDetail,
    TopicList,
)
from loramem.api.admin.serving import TopicService
from loramem.api.dependencies import Serving, State, require_admin_key
from loramem.api.protocol import TopicName
from loramem.api.state import AppState
from loramem.core.base_model import training_precision
from loramem.core.metrics import process_memory

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


async def _apply_now(state: AppState) -> None:
    """Apply a change to this server at once; other servers notice it at their next poll."""
    if state.serving is not None:
        await state.serving.refresh()


@router.get("/topics", response_model=TopicList)
async def list_topics(topics: Topics) -> TopicList:
    return TopicList(topics=await asyncio.to_thread(topics.summaries))


@router.get("/topics/{name}", response_model=TopicDetail)
async def get_topic(name: TopicName, topics: Topics) -> TopicDetail:
    return await asyncio.to_thread(topics.detail, name)


@router.post("/topics/{name}/activate", response_model=TopicDetail)
async def activate(
    name: TopicName, body: ActivateRequest, topics: Topics, state: State
) -> TopicDetail:
    detail = await asyncio.to_thread(topics.activate, name, body.version)
    await _apply_now(state)
    return detail


@router.delete("/topics/{name}", response_model=Forgotten)
async def forget(name: TopicName, topics: Topics, state: State) -> Forgotten:
    forgotten = await asyncio.to_thread(topics.forget, name)
    await _apply_now(state)
    return forgotten


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    topics: Topics, limit: int = Query(50, ge=1, le=500), status: str | None = None
) -> JobList:
    return JobList(jobs=await asyncio.to_thread(topics.jobs, limit, status))


@router.get("/engine", response_model=EngineView)
async def engine(serving: Serving, state: State) -> EngineView:
    return EngineView.model_validate(
        {
            **serving.engine.describe(),
            "base_model": state.settings.base_model,
            # Measured on the first call (bf16_faster): off the event loop.
            "train_precision": await asyncio.to_thread(training_precision, state.settings),
            "active_versions": serving.adapters.active_versions(),
            "active_modules": serving.adapters.active_modules(),
            "memory_rss_bytes": memory.rss if (memory := process_memory()) else None,
        }
    )


@router.get("/activity", response_model=Activity)
async def activity(state: State) -> Activity:
    return Activity.model_validate(state.requests.snapshot())
