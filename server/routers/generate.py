"""POST /generate: answer from a topic's memory (or the base model), whole or streamed (SSE)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from server.dependencies import Generation
from server.schemas import GenerateRequest, GenerateResponse

router = APIRouter(tags=["generation"])

T = TypeVar("T")
DISCONNECT_POLL_SECONDS = 0.2


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
    body: GenerateRequest, generation: Generation, request: Request
) -> GenerateResponse | Response:
    if not body.stream:
        result = await _unless_disconnected(request, generation.generate(body))
        # Nobody is listening any more; 499 is what proxies log for a client that went away.
        return result if result is not None else Response(status_code=499)
    chunks = await generation.stream(body)

    async def events() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
