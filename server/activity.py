"""Recent request activity for the dashboard: a pure ASGI middleware (it leaves the request's
`receive` alone, so handlers still notice a client that disconnects)."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Routes that watch the server or a job (the dashboard polls them): recording them would drown
# the requests that matter.
QUIET_PREFIXES = ("/admin", "/jobs", "/healthz", "/readyz", "/metrics", "/static", "/favicon")


@dataclass
class RequestLog:
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))
    by_status: Counter[int] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        return {
            "recent": list(reversed(self.recent)),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
        }


class ActivityMiddleware:
    def __init__(self, app: ASGIApp, log: RequestLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(QUIET_PREFIXES):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.log.by_status[status] += 1
            self.log.recent.append(
                {
                    "at": time.time(),
                    "method": scope.get("method"),
                    "path": path,
                    "status": status,
                    "ms": round((time.monotonic() - started) * 1000, 1),
                }
            )
