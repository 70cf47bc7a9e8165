"""A claimed job in this worker's hands, with what each step of its pipeline needs."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from loramem.core.registry import queue
from loramem.core.registry.db import Database
from loramem.core.settings import Settings


class WorkerStopping(Exception):
    """The worker was asked to stop in the middle of a job."""


@dataclass(frozen=True)
class RunningJob:
    settings: Settings
    db: Database
    claimed: queue.ClaimedJob
    worker_id: str
    stop: threading.Event

    @property
    def id(self) -> str:
        return self.claimed.id

    def check_stop(self) -> None:
        """Called between units of work: a stopping worker hands the job back."""
        if self.stop.is_set():
            raise WorkerStopping
