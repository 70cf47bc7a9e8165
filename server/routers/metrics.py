"""GET /metrics: Prometheus text format."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from server.dependencies import State, require_api_key
from server.registry.models import Job

router = APIRouter(tags=["health"])


def read_snapshot(state: Any) -> dict[str, Any]:
    """Scrape-time values: the engine's state and the jobs by state (one query)."""
    values: dict[str, Any] = state.engine.describe() if state.engine is not None else {}
    values["queue_depth"] = state.generation.pending if state.generation is not None else 0
    with state.db.session() as session:
        values["jobs"] = dict(
            session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        )
    return values


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, state: State) -> Response:
    if not state.settings.metrics_public:
        require_api_key(request, state)
    body = await asyncio.to_thread(state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
