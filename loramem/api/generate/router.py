"""POST /generate: answer from a topic's memory (or the base model), whole or streamed (SSE)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response

from loramem.api.dependencies import Generation
from loramem.api.generate.protocol import GenerateRequest, GenerateResponse
from loramem.api.generate.serving import GenerateServing
from loramem.api.streaming import sse

router = APIRouter(tags=["generation"])

T = TypeVar("T")
DISCONNECT_POLL_SECONDS = 0.2


def get_serving(generation: Generation) -> GenerateServing:
    return GenerateServing(generation)


Serving = Annotated[GenerateServing, Depends(get_serving)]


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """Runs `work`; if the client goes away first, cancels it (which aborts it in the engine)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                return None
    finally:
        task.cancel()


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def generate(
    body: GenerateRequest, serving: Serving, request: Request
) -> GenerateResponse | Response:
    if not body.stream:
        result = await _unless_disconnected(request, serving.generate(body))
        # Nobody is listening any more; 499 is what proxies log for a client that went away.
        return result if result is not None else Response(status_code=499)
    generation = await serving.start(body)
    return sse(serving.chunks(generation), generation.release)
