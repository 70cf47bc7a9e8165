"""POST /memorize: store knowledge and queue its training."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header

from loramem.api.dependencies import Memory
from loramem.api.memorize.protocol import MemorizeRequest, MemorizeResponse

router = APIRouter(tags=["memory"])


@router.post("/memorize", status_code=202, response_model=MemorizeResponse)
async def memorize(
    body: MemorizeRequest,
    memory: Memory,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> MemorizeResponse:
    result = await asyncio.to_thread(memory.memorize, body, idempotency_key)
    return MemorizeResponse(job_id=result.job_id, topic=result.topic, status=result.status)
