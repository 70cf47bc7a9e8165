"""POST /generate: answer from a topic's memory (or the base model), whole or streamed (SSE)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from server.dependencies import Generation
from server.schemas import GenerateRequest, GenerateResponse

router = APIRouter(tags=["generation"])


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def generate(
    body: GenerateRequest, generation: Generation
) -> GenerateResponse | StreamingResponse:
    if not body.stream:
        return await generation.generate(body)
    chunks = await generation.stream(body)

    async def events() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
