"""Keeping a server's view of the registry fresh: the registry is the only state shared with
workers and other servers, so each server polls it, and wakes at once when its own embedded worker
publishes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("loramem.polling")


class RegistryChanges:
    """Tells this process's pollers that the registry changed, from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: list[asyncio.Event] = []

    def subscribe(self) -> asyncio.Event:
        self._events.append(event := asyncio.Event())
        return event

    def notify(self) -> None:
        for event in self._events:
            self._loop.call_soon_threadsafe(event.set)


async def poll_forever(
    refresh: Callable[[], Awaitable[object]],
    interval: float,
    what: str,
    changed: asyncio.Event | None = None,
) -> None:
    """Runs `refresh` every `interval` seconds, or as soon as `changed` is set; a failure is
    logged and retried, never fatal."""
    while True:
        try:
            await refresh()
        except asyncio.CancelledError:
            raise
        except SQLAlchemyError as error:
            log.warning("cannot read %s (%s); retrying", what, type(error).__name__)
        except Exception:
            log.exception("refreshing %s failed; retrying", what)
        if changed is None:
            await asyncio.sleep(interval)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), interval)
        changed.clear()
