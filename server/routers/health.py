"""Liveness, readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from server.dependencies import State
from server.errors import APIError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz", responses={503: {"description": "engine not loaded or database unreachable"}}
)
async def readyz(state: State) -> dict[str, str]:
    if state.startup_error is not None:
        raise APIError(503, f"startup failed: {state.startup_error}")
    if state.generation is None:
        raise APIError(503, "the engine is still starting", headers={"Retry-After": "5"})
    if not await asyncio.to_thread(state.db.ping):
        raise APIError(503, "the database is unreachable", headers={"Retry-After": "5"})
    return {"status": "ready"}
