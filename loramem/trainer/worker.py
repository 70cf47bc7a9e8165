"""The trainer worker's claim loop: claims a job, runs its pipeline (`pipeline.py`), and records
how it ended (handed back, failed for good, retried).

Runs inside the server (the embedded default) or as `loramem worker` processes, any number of
them, sharing only the registry and the adapter store.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from loramem.core.base_model import resolve_base_model
from loramem.core.compute_threads import in_own_thread
from loramem.core.heap import release_free_heap
from loramem.core.registry import queue
from loramem.core.registry.db import Database
from loramem.core.settings import Settings
from loramem.trainer.job import RunningJob, WorkerStopping
from loramem.trainer.pipeline import JobPipeline, PermanentJobError

log = logging.getLogger("loramem.worker")

_ABSOLUTE_PATH = re.compile(r"(/[\w.\-]+){2,}")


def readable_error(error: BaseException) -> str:
    """An error for the job record: its kind and message, without file system paths."""
    message = _ABSOLUTE_PATH.sub("<path>", str(error))[:500]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class TrainerWorker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        worker_id: str | None = None,
        observe_step: Callable[[float], None] | None = None,
        on_published: Callable[[], None] | None = None,
        shared_base_model: Callable[[], Any] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.observe_step = observe_step
        # Called after each publish (the embedded worker wakes its server's pollers).
        self.on_published = on_published
        # The base model already in memory (the serving engine's, in the embedded default),
        # or None: jobs train on its weights instead of a copy of their own.
        self.shared_base_model = shared_base_model
        # Claims no job before this says so (the embedded worker waits for its engine).
        self.ready = ready
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._base_model_path: Path | None = None
        self._stop = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Takes jobs until `stop` is set; the job in hand is handed back at its next step."""
        self._stop = stop
        log.info("worker %s started", self.worker_id)
        while not stop.is_set():
            if self.ready is not None and not self.ready():
                stop.wait(self.settings.job_poll_seconds)
                continue
            try:
                if not self.run_once():
                    stop.wait(self.settings.job_poll_seconds)
            except SQLAlchemyError as error:
                log.warning(
                    "worker %s: registry unavailable (%s); retrying",
                    self.worker_id,
                    type(error).__name__,
                )
                stop.wait(self.settings.job_poll_seconds)
            except Exception:
                log.exception("worker %s: unexpected error; continuing", self.worker_id)
                stop.wait(self.settings.job_poll_seconds)
        log.info("worker %s stopped", self.worker_id)

    def run_once(self) -> bool:
        """Claims and processes one job; False when there was none."""
        job = queue.claim(self.db, self.worker_id, self.settings.lease_seconds)
        if job is None:
            return False
        # A thread that ends with the job takes its compute pool along (core/compute_threads).
        in_own_thread(f"job-{job.id[:8]}", self.process, job)
        return True

    def process(self, job: queue.ClaimedJob) -> None:
        try:
            if self._base_model_path is None:
                self._base_model_path = resolve_base_model(self.settings)
            shared = self.shared_base_model() if self.shared_base_model is not None else None
            running = RunningJob(self.settings, self.db, job, self.worker_id, self._stop)
            JobPipeline(running, self.observe_step).run(self._base_model_path, shared)
            if self.on_published is not None:
                self.on_published()
        except queue.LeaseLost:
            log.info("job %s is no longer ours (cancelled or taken over); dropped", job.id)
        except WorkerStopping:
            queue.hand_back(self.db, job.id, self.worker_id)
        except PermanentJobError as error:
            queue.fail(self.db, job.id, self.worker_id, str(error), retry=False)
        except Exception as error:
            log.exception("job %s attempt %d failed", job.id, job.attempt)
            queue.fail(
                self.db,
                job.id,
                self.worker_id,
                readable_error(error),
                retry=True,
                retry_delay_seconds=self.settings.job_retry_delay_seconds,
            )
        finally:
            # The training copy of the model and the job's data, freed: in the embedded default
            # that memory would otherwise sit in glibc's arenas beside the serving engine.
            release_free_heap()


def start_embedded(
    settings: Settings,
    db: Database,
    observe_step: Callable[[float], None] | None = None,
    on_published: Callable[[], None] | None = None,
    shared_base_model: Callable[[], Any] | None = None,
    ready: Callable[[], bool] | None = None,
) -> tuple[threading.Thread, threading.Event]:
    """The worker of the embedded default: a thread of the server process."""
    stop = threading.Event()
    worker = TrainerWorker(
        settings,
        db,
        observe_step=observe_step,
        on_published=on_published,
        shared_base_model=shared_base_model,
        ready=ready,
    )
    thread = threading.Thread(target=worker.run, args=(stop,), name="trainer", daemon=True)
    thread.start()
    return thread, stop
