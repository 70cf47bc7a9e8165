"""Admission: how many generations may be in progress at once.

A request is admitted before its first `await` and holds its place until its response has ended,
streamed or not, so that no burst slips past the limit while earlier requests are still being
routed, resolved or retrieved. Overload is refused at once (429), never queued.
"""

from __future__ import annotations

from collections.abc import Callable

from loramem.core.errors import Overloaded


class Admission:
    def __init__(self, limit: int, on_refused: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.on_refused = on_refused
        self.in_progress = 0

    def admit(self) -> Ticket:
        """A place for one request, or Overloaded. Synchronous: nothing can interleave."""
        if self.in_progress >= self.limit:
            self.on_refused()
            raise Overloaded(
                f"the server is busy ({self.in_progress} generations in progress); retry shortly",
                retry_after=1,
            )
        self.in_progress += 1
        return Ticket(self)


class Ticket:
    """One admitted request's place; released once, however many paths reach the end."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission.in_progress -= 1
            self._admission = None
