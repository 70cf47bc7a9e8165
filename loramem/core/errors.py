"""Domain errors: what went wrong, in words a client can read, without HTTP.

Serving, the registry and the API's serving classes raise these; only `loramem.api.errors` knows
which status and envelope type each one becomes. Messages never carry a path, a stack trace or the
client's input.
"""

from __future__ import annotations


class DomainError(Exception):
    """A request that cannot be served as asked. `param` names the input at fault, if one is."""

    def __init__(
        self, message: str, *, param: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        # Seconds after which the same request may succeed (a busy or starting server).
        self.retry_after = retry_after


class InvalidRequest(DomainError):
    """The request contradicts itself or the server's configuration."""


class NotFound(DomainError):
    def __init__(self, what: str, *, param: str | None = None) -> None:
        super().__init__(f"{what} not found", param=param)


class Conflict(DomainError):
    """The request clashes with what is stored (a finished job, a reused idempotency key)."""


class TopicNotReady(Conflict):
    """The topic exists but has no trained version to answer with yet."""


class TooLarge(DomainError):
    """Knowledge over a configured size limit."""


class Overloaded(DomainError):
    """Admission refused: the server is generating as much as it is allowed to."""


class Unavailable(DomainError):
    """Something the request needs is not there right now (starting engine, unservable adapters)."""


class EngineFailed(Unavailable):
    """The engine failed while generating this request."""
