"""Request accounting, as pure ASGI middlewares (they leave the request's `receive` alone, so
handlers still notice a client that disconnects): recent activity for the dashboard, Prometheus
request metrics, and the body-size limit."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loramem.api.errors import APIError, error_response
from loramem.core.metrics import Metrics

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
    def __init__(self, app: ASGIApp, log: RequestLog, metrics: Metrics) -> None:
        self.app = app
        self.log = log
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
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
            elapsed = time.monotonic() - started
            # The route's template, not the path: one series per route, whatever the ids.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            if not path.startswith(QUIET_PREFIXES):
                self._record(scope, path, status, elapsed)

    def _record(self, scope: Scope, path: str, status: int, elapsed: float) -> None:
        self.log.by_status[status] += 1
        self.log.recent.append(
            {
                "at": time.time(),
                "method": scope.get("method"),
                "path": path,
                "status": status,
                "ms": round(elapsed * 1000, 1),
            }
        )


class BodyLimitMiddleware:
    """413 for a body over `limit` bytes: by its Content-Length, or while it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = APIError(413, f"the request body is larger than {self.limit} bytes")
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await error_response(too_large)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await error_response(too_large)(scope, receive, send)


class _TooLarge(BaseException):
    """Not an Exception: FastAPI turns any Exception raised while reading a body into a 400."""
