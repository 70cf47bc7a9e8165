"""GET /metrics: Prometheus text format."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from loramem.api.dependencies import State, require_api_key
from loramem.api.state import AppState
from loramem.core.registry import queue

router = APIRouter(tags=["health"])


def read_snapshot(state: AppState) -> dict[str, Any]:
    """Scrape-time values: the engine's state, admitted generations and jobs by state."""
    values: dict[str, Any] = state.serving.engine.describe() if state.serving is not None else {}
    values["queue_depth"] = state.admission.in_progress
    values["jobs"] = queue.count_by_status(state.db)
    return values


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request, state: State) -> Response:
    if not state.settings.metrics_public:
        require_api_key(request, state)
    body = await asyncio.to_thread(state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
