"""Keeping a server's view of the registry fresh: the registry is the only state shared with
workers and other servers, so each server polls it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("loramem.polling")


async def poll_forever(
    refresh: Callable[[], Awaitable[object]], interval: float, what: str
) -> None:
    """Runs `refresh` every `interval` seconds; a failure is logged and retried, never fatal."""
    while True:
        try:
            await refresh()
        except asyncio.CancelledError:
            raise
        except SQLAlchemyError as error:
            log.warning("cannot read %s (%s); retrying", what, type(error).__name__)
        except Exception:
            log.exception("refreshing %s failed; retrying", what)
        await asyncio.sleep(interval)
