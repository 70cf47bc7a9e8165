"""One error envelope for every failure: `{"error": {"type", "message", "param"?}}`.

The only place that knows HTTP statuses: domain errors (`loramem.core.errors`) are mapped here,
and `APIError` is for what only HTTP knows (keys, body limits). Messages are written for clients:
they never carry a path, a stack trace or the client's input.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from loramem.core import errors as domain

log = logging.getLogger("loramem.api")

_TYPES_BY_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_request",
    429: "overloaded",
    503: "not_ready",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES_BY_STATUS.get(status, "error")
        self.param = param
        self.headers = headers


# The most specific class first: a subclass may answer differently from its parent.
_DOMAIN_STATUSES: tuple[tuple[type[domain.DomainError], int, str | None], ...] = (
    (domain.TopicNotReady, 409, "topic_not_ready"),
    (domain.EngineFailed, 503, "engine_error"),
    (domain.InvalidRequest, 400, None),
    (domain.NotFound, 404, None),
    (domain.Conflict, 409, None),
    (domain.TooLarge, 413, None),
    (domain.Overloaded, 429, None),
    (domain.Unavailable, 503, None),
)


def from_domain(error: domain.DomainError) -> APIError:
    status, type = next(
        ((status, type) for kind, status, type in _DOMAIN_STATUSES if isinstance(error, kind)),
        (400, None),
    )
    headers = None if error.retry_after is None else {"Retry-After": str(error.retry_after)}
    return APIError(status, error.message, type=type, param=error.param, headers=headers)


def error_body(type: str, message: str, param: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type, "message": message}
    if param is not None:
        error["param"] = param
    return {"error": error}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(error.type, error.message, error.param),
        status_code=error.status,
        headers=error.headers,
    )


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return error_response(APIError(400, "the request body is not valid JSON"))
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "missing" and param:
        message = "field required"
    count = len(exc.errors())
    suffix = f" (and {count - 1} more error{'s' if count > 2 else ''})" if count > 1 else ""
    return error_response(
        APIError(422, f"{param}: {message}{suffix}" if param else message + suffix, param=param)
    )


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = dict(exc.headers) if exc.headers else None
    return error_response(APIError(exc.status_code, message, headers=headers))


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc)


def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, domain.DomainError)
    return error_response(from_domain(exc))


def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning(
        "database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__
    )
    return error_response(
        APIError(503, "the database is unavailable; retry later", headers={"Retry-After": "5"})
    )


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, "internal server error", type="internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(domain.DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Connection-level failures only; a constraint violation is a bug, not an outage.
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)
