"""Server-sent events, as /generate and /v1 stream them: one JSON object per event, then
`[DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask


def sse(chunks: AsyncIterator[dict[str, Any]], ended: Callable[[], None]) -> StreamingResponse:
    """`ended` runs once the response is over, even when the client left before its first event
    (the chunks were then never started, so their own cleanup never ran)."""

    async def events() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", background=BackgroundTask(ended)
    )
