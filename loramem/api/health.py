"""Liveness, readiness."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from loramem.api.dependencies import State
from loramem.api.errors import APIError

router = APIRouter(tags=["health"])


class Healthy(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"


@router.get("/healthz", response_model=Healthy)
async def healthz() -> Healthy:
    return Healthy()


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"description": "engine not loaded or database unreachable"}},
)
async def readyz(state: State) -> Ready:
    if state.startup_error is not None:
        raise APIError(503, f"startup failed: {state.startup_error}")
    if state.serving is None:
        raise APIError(503, "the engine is still starting", headers={"Retry-After": "5"})
    if not await asyncio.to_thread(state.db.ping):
        raise APIError(503, "the database is unreachable", headers={"Retry-After": "5"})
    return Ready()
