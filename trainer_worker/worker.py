"""The trainer worker: claims a job, builds training data, trains, measures recall, publishes.

Runs inside the server (the embedded default) or as `loramem worker` / `python -m trainer_worker`
processes, any number of them, sharing only the registry and the adapter store.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from server.adapter_store import check_writable, remove_adapter_files, save_adapter
from server.base_model import load_causal_lm, resolve_base_model, training_precision
from server.config import Settings
from server.prompting import context_block, question_ids, with_context
from server.registry import queue
from server.registry.db import Database
from server.registry.models import Document, Module
from server.registry.models import GeneratedItem as GeneratedRow
from trainer_worker.augmentation import (
    DataGenerator,
    EndpointGenerator,
    GeneratedItem,
    ReadBack,
    RuleBasedGenerator,
    ServedModelGenerator,
    check_items,
    generate_with_fallback,
    recitals,
    unasked_things,
)
from trainer_worker.batching import TrainingExample
from trainer_worker.lora_trainer import (
    ComputePlan,
    MemoryBoundError,
    plan_compute,
    step_budget,
    train_lora,
)
from trainer_worker.modules import ModuleLoad, StoredDocument, assign_modules, module_capacity
from trainer_worker.options import TrainingOptions
from trainer_worker.recall import greedy_replies, measure_recall
from trainer_worker.training_data import Knowledge, build_training_set

log = logging.getLogger("loramem.worker")

# Progress events (the dashboard's loss curve) per job, whatever its length.
PROGRESS_EVENTS_PER_JOB = 50
_ABSOLUTE_PATH = re.compile(r"(/[\w.\-]+){2,}")


class PermanentJobError(Exception):
    """The job cannot succeed however often it is retried; the message is shown to clients."""


class WorkerStopping(Exception):
    """The worker was asked to stop in the middle of a job."""


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
    ) -> None:
        self.settings = settings
        self.db = db
        self.observe_step = observe_step
        # Called after each publish (the embedded worker wakes its server's pollers).
        self.on_published = on_published
        # The base model already in memory (the serving engine's, in the embedded default),
        # or None: jobs train on its weights instead of a copy of their own.
        self.shared_base_model = shared_base_model
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._base_model_path: Path | None = None
        self._stop = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Takes jobs until `stop` is set; the job in hand is handed back at its next step."""
        self._stop = stop
        log.info("worker %s started", self.worker_id)
        while not stop.is_set():
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
        self.process(job)
        return True

    def process(self, job: queue.ClaimedJob) -> None:
        try:
            self._train_and_publish(job)
        except queue.LeaseLost:
            log.info("job %s is no longer ours (cancelled or taken over); dropped", job.id)
        except WorkerStopping:
            queue.hand_back(self.db, job.id, self.worker_id)
        except PermanentJobError as error:
            queue.fail(self.db, job.id, self.worker_id, str(error), retry=False)
        except Exception as error:
            log.exception("job %s attempt %d failed", job.id, job.attempt)
            queue.fail(self.db, job.id, self.worker_id, readable_error(error), retry=True)
        finally:
            _return_freed_memory()

    def _train_and_publish(self, job: queue.ClaimedJob) -> None:
        try:
            options = TrainingOptions.model_validate(job.options)
        except ValidationError as error:
            raise PermanentJobError(f"invalid options: {error.error_count()} error(s)") from error
        try:
            check_writable(self.settings.resolved_adapter_dir)
        except OSError as error:  # fail before training, not after minutes of it
            raise PermanentJobError(
                f"the adapter store is not writable ({type(error).__name__})"
            ) from error
        if self._base_model_path is None:
            self._base_model_path = resolve_base_model(self.settings)
        sharing = self.shared_base_model() if self.shared_base_model is not None else None
        model, tokenizer = load_causal_lm(self._base_model_path, self.settings.device, sharing)
        if sharing is not None:
            log.info("job %s trains on the serving engine's base weights, shared", job.id)
        documents = self._knowledge(job, options, model, tokenizer)
        capacity = module_capacity(
            options.rank, self.settings.module_tokens_per_rank, self.settings.module_max_tokens
        )
        assignments, loads = assign_modules(
            tokenizer, documents, self._module_loads(job.topic_id), capacity
        )
        # An earlier job of the topic may have learned this job's documents already (it saw
        # them in the registry): their modules are retrained all the same.
        changed = sorted(
            set(assignments.values())
            | {d.module for d in documents if d.job_id == job.id and d.module is not None}
        )
        if not changed:
            raise PermanentJobError("the topic holds no knowledge to train on")
        sets = {}
        for number in changed:
            knowledge = [
                _counting_unasked(d.knowledge)
                for d in documents
                if assignments.get(d.id, d.module) == number
            ]
            sets[number] = build_training_set(tokenizer, knowledge, options.augment)
            if not sets[number].examples:
                raise PermanentJobError("the topic holds no knowledge to train on")
        plans = {number: self._compute_plan(model, data.examples) for number, data in sets.items()}
        grand_total = sum(step_budget(options, data.examples) for data in sets.values())
        log.info(
            "job %s training topic=%s modules=%s examples=%d tokens=%d rank=%d steps=%d "
            "objective=%s %s",
            job.id,
            job.topic_name,
            ",".join(map(str, changed)),
            sum(len(data.examples) for data in sets.values()),
            sum(data.tokens for data in sets.values()),
            options.rank,
            grand_total,
            options.objective,
            next(iter(plans.values())).precision,
        )

        last_beat = 0.0
        last_step = time.monotonic()
        done = 0

        def on_step(step: int, total: int, loss: float) -> None:
            nonlocal last_beat, last_step
            if self._stop.is_set():
                raise WorkerStopping
            if self.observe_step is not None:
                self.observe_step(time.monotonic() - last_step)
            last_step = time.monotonic()
            step += done
            event = step % max(1, grand_total // PROGRESS_EVENTS_PER_JOB) == 0
            now = time.monotonic()
            if event or step == grand_total or now - last_beat > 1.0 or step == 1:
                queue.heartbeat(
                    self.db,
                    job.id,
                    self.worker_id,
                    self.settings.lease_seconds,
                    step=step,
                    total_steps=grand_total,
                    loss=loss,
                    event=event or step == grand_total,
                )
                last_beat = now

        threshold = (
            options.min_recall if options.min_recall is not None else self.settings.min_recall
        )
        trained: list[queue.TrainedModule] = []
        details: dict[str, Any] = {"probes": 0, "unasked": 0}
        try:
            for number, data in sets.items():
                peft_model = train_lora(
                    model, tokenizer.pad_token_id, data.examples, options, on_step, plans[number]
                )
                done += step_budget(options, data.examples)
                recall = data.recall(measure_recall(peft_model, tokenizer, data.probes))
                details["probes"] += len(data.probes)
                details["unasked"] += data.unasked
                stored = save_adapter(
                    peft_model,
                    self.settings.resolved_adapter_dir,
                    job.topic_id,
                    f"{job.id}-{job.attempt}-m{number}",
                )
                load = loads[number]
                trained.append(
                    queue.TrainedModule(
                        module=number,
                        path=stored.relative_path,
                        sha256=stored.sha256,
                        rank=options.rank,
                        size_bytes=stored.size_bytes,
                        recall=recall,
                        activate=recall >= threshold,
                        recall_trained=(
                            measure_recall(peft_model, tokenizer, data.trained_probes)
                            if data.trained_probes
                            else None
                        ),
                        tokens=load.tokens,
                        items=load.items,
                        capacity_tokens=load.capacity,
                    )
                )
                model = peft_model.unload()  # the base model again, for the next module
            below = [t for t in trained if not t.activate]
            note = (
                None
                if not below
                else f"recall {min(t.recall for t in below):.2f} is below the threshold "
                f"{threshold:.2f}; the version is kept but not activated"
            )
            queue.publish_versions(
                self.db,
                job.id,
                self.worker_id,
                trained,
                assignments=assignments,
                note=note,
                details=details,
            )
        except BaseException:
            for module in trained:
                remove_adapter_files(self.settings.resolved_adapter_dir, module.path)
            raise
        if self.on_published is not None:
            self.on_published()

    def _compute_plan(self, model: Any, examples: list[TrainingExample]) -> ComputePlan:
        autocast = torch.bfloat16 if training_precision(self.settings) == "bf16" else None
        try:
            return plan_compute(
                model.config,
                max(len(example.input_ids) for example in examples),
                int(self.settings.train_memory_gb * 2**30),
                autocast,
            )
        except MemoryBoundError as error:
            raise PermanentJobError(f"{error} (LORAMEM_TRAIN_MEMORY_GB)") from error

    def _module_loads(self, topic_id: str) -> dict[int, ModuleLoad]:
        with self.db.session() as session:
            modules = session.scalars(select(Module).where(Module.topic_id == topic_id)).all()
            return {
                m.number: ModuleLoad(m.number, m.tokens, m.items, m.capacity_tokens)
                for m in modules
            }

    def _knowledge(
        self, job: queue.ClaimedJob, options: TrainingOptions, model: Any, tokenizer: Any
    ) -> list[StoredDocument]:
        """The topic's documents, with what a generator wrote from each text. Texts with nothing
        written yet (new ones) go to the generator now, and what it writes is kept."""
        with self.db.session() as session:
            documents = session.scalars(
                select(Document).where(Document.topic_id == job.topic_id).order_by(Document.id)
            ).all()
            written: dict[int, list[GeneratedRow]] = {}
            for row in session.scalars(
                select(GeneratedRow)
                .where(GeneratedRow.topic_id == job.topic_id)
                .order_by(GeneratedRow.id)
            ):
                written.setdefault(row.document_id, []).append(row)
            session.expunge_all()
        new_texts = [d for d in documents if d.text and d.id not in written]
        if options.augment != "none" and new_texts:
            for document, rows in self._augment(job, options, new_texts, model, tokenizer).items():
                written[document] = rows
        return [
            StoredDocument(
                d.id,
                d.job_id,
                d.module,
                Knowledge(
                    d.question,
                    d.answer,
                    d.text,
                    tuple(
                        GeneratedItem(
                            r.kind,  # type: ignore[arg-type]
                            r.question,
                            r.answer,
                            r.text,
                            r.held_out,
                            r.source,
                            r.rejected,
                        )
                        for r in written.get(d.id, [])
                    ),
                ),
            )
            for d in documents
        ]

    def _augment(
        self,
        job: queue.ClaimedJob,
        options: TrainingOptions,
        texts: list[Document],
        model: Any,
        tokenizer: Any,
    ) -> dict[int, list[GeneratedRow]]:
        generator = self._generator(
            options.generator or self.settings.augment_generator, model, tokenizer
        )
        rows: dict[int, list[GeneratedRow]] = {}
        fallbacks: list[str] = []
        unusable: list[int] = []
        read_back = _read_back(model, tokenizer)
        for document in texts:
            if self._stop.is_set():
                raise WorkerStopping
            assert document.text is not None
            generation = generate_with_fallback(generator, document.text)
            if generation.fallback_reason:
                fallbacks.append(generation.fallback_reason)
            checked = check_items(generation.items, document.text, read_back)
            if options.recite:
                checked += recitals(document.text, checked)
            if not any(item.kind == "qa" and item.rejected is None for item in checked):
                unusable.append(document.id)
            rows[document.id] = [
                GeneratedRow(
                    topic_id=job.topic_id,
                    document_id=document.id,
                    job_id=job.id,
                    generator=generation.generator,
                    kind=item.kind,
                    question=item.question,
                    answer=item.answer,
                    text=item.text,
                    held_out=item.held_out,
                    source=item.source,
                    rejected=item.rejected,
                )
                for item in checked
            ]
        items = [row for document_rows in rows.values() for row in document_rows]
        kept = sum(row.rejected is None for row in items)
        recited = sum(row.kind == "recital" for row in items)
        queue.store_generated(
            self.db,
            job.id,
            self.worker_id,
            items,
            generator=generator.name,
            texts=len(texts),
            generated=len(items),
            kept=kept,
            rejected=len(items) - kept,
            # Recitals among the kept items.
            recited=recited,
            fallbacks=len(fallbacks),
            fallback_reason=fallbacks[0] if fallbacks else None,
            # Texts learned as raw text alone: no question about them passed its check.
            texts_without_questions=unusable,
        )
        log.info(
            "job %s augmented %d texts into %d items (%d kept) with %s (%d fell back to rules%s)",
            job.id,
            len(texts),
            len(items),
            kept,
            generator.name,
            len(fallbacks),
            f": {fallbacks[0]}" if fallbacks else "",
        )
        return rows

    def _generator(self, name: str, model: Any, tokenizer: Any) -> DataGenerator:
        if name == "model":
            return ServedModelGenerator(model, tokenizer)
        if name == "endpoint" and self.settings.augment_endpoint_url:
            return EndpointGenerator(
                self.settings.augment_endpoint_url,
                self.settings.augment_endpoint_model,
                self.settings.augment_endpoint_api_key,
                self.settings.augment_endpoint_timeout,
            )
        return RuleBasedGenerator()


def _counting_unasked(knowledge: Knowledge) -> Knowledge:
    """The knowledge with its count of unasked things: parsed only for the modules a job
    trains, not for every document of the topic."""
    if not knowledge.text:
        return knowledge
    unasked = unasked_things(knowledge.text, knowledge.generated)
    return dataclasses.replace(knowledge, unasked=len(unasked))


def _read_back(model: Any, tokenizer: Any) -> ReadBack:
    """The base model answering each question with its passage in the prompt, as mode rag
    asks it: the round trip that checks a generated question."""

    def read(pairs: Any) -> list[str]:
        requests = [
            (question_ids(tokenizer, with_context(context_block([passage]), question)), 32)
            for passage, question in pairs
        ]
        return greedy_replies(model, tokenizer, requests)

    return read


def _return_freed_memory() -> None:
    """Gives the training copy of the model back to the OS; glibc would keep it in its arenas,
    and in the embedded default that memory sits beside the serving engine."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def start_embedded(
    settings: Settings,
    db: Database,
    observe_step: Callable[[float], None] | None = None,
    on_published: Callable[[], None] | None = None,
    shared_base_model: Callable[[], Any] | None = None,
) -> tuple[threading.Thread, threading.Event]:
    """The worker of the embedded default: a thread of the server process."""
    stop = threading.Event()
    worker = TrainerWorker(
        settings,
        db,
        observe_step=observe_step,
        on_published=on_published,
        shared_base_model=shared_base_model,
    )
    thread = threading.Thread(target=worker.run, args=(stop,), name="trainer", daemon=True)
    thread.start()
    return thread, stop
