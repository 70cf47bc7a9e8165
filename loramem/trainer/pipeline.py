"""One claimed job, as named steps: load knowledge -> build data -> train -> measure -> publish.

`run` reads top to bottom as that list. Errors: `PermanentJobError` ends the job failed (retrying
cannot help), `WorkerStopping` hands it back, `LeaseLost` drops it; anything else is retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from sqlalchemy import select

from loramem.core.adapter_store import check_writable, remove_adapter_files, save_adapter
from loramem.core.base_model import load_causal_lm, training_precision, weights_precision
from loramem.core.heap import release_free_heap
from loramem.core.metrics import process_memory
from loramem.core.options import TrainingOptions
from loramem.core.registry import queue, versions
from loramem.core.registry.models import Module
from loramem.trainer.batching import TrainingExample, padded_width
from loramem.trainer.job import RunningJob
from loramem.trainer.knowledge import KnowledgeLoader, counting_unasked
from loramem.trainer.lora_trainer import (
    ComputePlan,
    MemoryBoundError,
    cast_once_bytes,
    plan_compute,
    step_budget,
    train_lora,
)
from loramem.trainer.modules import ModuleLoad, StoredDocument, assign_modules, module_capacity
from loramem.trainer.recall import measure_recall
from loramem.trainer.training_data import TrainingSet, build_training_set

log = logging.getLogger("loramem.worker")

# Progress events (the dashboard's loss curve) per job, whatever its length.
PROGRESS_EVENTS_PER_JOB = 50


class PermanentJobError(Exception):
    """The job cannot succeed however often it is retried; the message is shown to clients."""


@dataclass
class TrainingData:
    """What step two builds: per module to train, its training set and compute plan."""

    sets: dict[int, TrainingSet]
    plans: dict[int, ComputePlan]
    assignments: dict[int, int]
    loads: dict[int, ModuleLoad]


class JobPipeline:
    def __init__(
        self, running: RunningJob, observe_step: Callable[[float], None] | None = None
    ) -> None:
        self.running = running
        self.settings = running.settings
        self.db = running.db
        self.job = running.claimed
        self.observe_step = observe_step

    def run(self, base_model_path: Path, shared_base_model: Any | None) -> None:
        options = self.options()
        model, tokenizer = load_causal_lm(
            base_model_path,
            self.settings.device,
            shared_base_model,
            weights_precision(self.settings),
        )
        if shared_base_model is not None:
            log.info("job %s trains on the serving engine's base weights, shared", self.job.id)
        documents = KnowledgeLoader(self.running).load(options, model, tokenizer)
        self._settle_memory("knowledge loaded")
        data = self.build_data(documents, options, model, tokenizer)
        trained = self.train_and_measure(data, options, model, tokenizer)
        self._settle_memory("trained and measured")
        try:
            self.publish(trained, data, options)
        except BaseException:
            for module in trained:
                remove_adapter_files(self.settings.resolved_adapter_dir, module.path)
            raise

    def options(self) -> TrainingOptions:
        """The job's options, and a writable adapter store: checked before minutes of training."""
        try:
            options = TrainingOptions.model_validate(self.job.options)
        except ValidationError as error:
            raise PermanentJobError(f"invalid options: {error.error_count()} error(s)") from error
        try:
            check_writable(self.settings.resolved_adapter_dir)
        except OSError as error:
            raise PermanentJobError(
                f"the adapter store is not writable ({type(error).__name__})"
            ) from error
        return options

    def build_data(
        self,
        documents: list[StoredDocument],
        options: TrainingOptions,
        model: Any,
        tokenizer: Any,
    ) -> TrainingData:
        """The modules this job retrains, and each one's examples, probes and compute plan."""
        capacity = module_capacity(
            options.rank, self.settings.module_tokens_per_rank, self.settings.module_max_tokens
        )
        assignments, loads = assign_modules(tokenizer, documents, self._module_loads(), capacity)
        # An earlier job of the topic may have learned this job's documents already (it saw
        # them in the registry): their modules are retrained all the same.
        changed = sorted(
            set(assignments.values())
            | {d.module for d in documents if d.job_id == self.job.id and d.module is not None}
        )
        if not changed:
            raise PermanentJobError("the topic holds no knowledge to train on")
        sets = {}
        for number in changed:
            knowledge = [
                counting_unasked(d.knowledge)
                for d in documents
                if assignments.get(d.id, d.module) == number
            ]
            sets[number] = build_training_set(tokenizer, knowledge, options.augment)
            if not sets[number].examples:
                raise PermanentJobError("the topic holds no knowledge to train on")
        plans = {number: self._compute_plan(model, data.examples) for number, data in sets.items()}
        data = TrainingData(sets, plans, assignments, loads)
        log.info(
            "job %s training topic=%s modules=%s examples=%d tokens=%d rank=%d steps=%d "
            "objective=%s %s",
            self.job.id,
            self.job.topic_name,
            ",".join(map(str, changed)),
            sum(len(s.examples) for s in sets.values()),
            sum(s.tokens for s in sets.values()),
            options.rank,
            sum(step_budget(options, s.examples) for s in sets.values()),
            options.objective,
            next(iter(plans.values())).precision,
        )
        return data

    def train_and_measure(
        self, data: TrainingData, options: TrainingOptions, model: Any, tokenizer: Any
    ) -> list[versions.TrainedModule]:
        """Each module trained in turn on the same base model, its adapter saved, its recall
        measured on held-out probes."""
        threshold = self._threshold(options)
        progress = _Progress(
            self, sum(step_budget(options, s.examples) for s in data.sets.values())
        )
        trained: list[versions.TrainedModule] = []
        try:
            for number, training_set in data.sets.items():
                peft_model = train_lora(
                    model,
                    tokenizer.pad_token_id,
                    training_set.examples,
                    options,
                    progress.on_step,
                    data.plans[number],
                )
                steps = progress.module_trained()
                self._settle_memory(f"module {number} trained")
                recall = training_set.recall(
                    measure_recall(peft_model, tokenizer, training_set.probes)
                )
                stored = save_adapter(
                    peft_model,
                    self.settings.resolved_adapter_dir,
                    self.job.topic_id,
                    f"{self.job.id}-{self.job.attempt}-m{number}",
                )
                load = data.loads[number]
                trained.append(
                    versions.TrainedModule(
                        module=number,
                        path=stored.relative_path,
                        sha256=stored.sha256,
                        rank=options.rank,
                        size_bytes=stored.size_bytes,
                        recall=recall,
                        activate=recall >= threshold,
                        recall_trained=(
                            measure_recall(peft_model, tokenizer, training_set.trained_probes)
                            if training_set.trained_probes
                            else None
                        ),
                        steps=steps,
                        tokens=load.tokens,
                        items=load.items,
                        capacity_tokens=load.capacity,
                    )
                )
                model = peft_model.unload()  # the base model again, for the next module
        except BaseException:
            for module in trained:
                remove_adapter_files(self.settings.resolved_adapter_dir, module.path)
            raise
        return trained

    def publish(
        self,
        trained: list[versions.TrainedModule],
        data: TrainingData,
        options: TrainingOptions,
    ) -> None:
        """The new versions, activated where their recall passed, in one fenced transaction."""
        threshold = self._threshold(options)
        below = [t for t in trained if not t.activate]
        note = (
            None
            if not below
            else f"recall {min(t.recall for t in below):.2f} is below the threshold "
            f"{threshold:.2f}; the version is kept but not activated"
        )
        details = {
            "probes": sum(len(s.probes) for s in data.sets.values()),
            "unasked": sum(s.unasked for s in data.sets.values()),
        }
        versions.publish_versions(
            self.db,
            self.job.id,
            self.running.worker_id,
            trained,
            assignments=data.assignments,
            note=note,
            details=details,
        )

    def _settle_memory(self, stage: str) -> None:
        """Hands what the stage freed back to the system, then logs the process's memory and
        its peak so far: which stage of a job needs the memory, and what it keeps."""
        release_free_heap()
        if (memory := process_memory()) is not None:
            log.info("job %s %s: %s", self.job.id, stage, memory)

    def _threshold(self, options: TrainingOptions) -> float:
        return options.min_recall if options.min_recall is not None else self.settings.min_recall

    def _compute_plan(self, model: Any, examples: list[TrainingExample]) -> ComputePlan:
        autocast = torch.bfloat16 if training_precision(self.settings) == "bf16" else None
        try:
            return plan_compute(
                model.config,
                padded_width(max(len(example.input_ids) for example in examples)),
                int(self.settings.train_memory_gb * 2**30),
                autocast,
                cast_once_bytes(model, autocast),
            )
        except MemoryBoundError as error:
            raise PermanentJobError(f"{error} (LORAMEM_TRAIN_MEMORY_GB)") from error

    def _module_loads(self) -> dict[int, ModuleLoad]:
        with self.db.session() as session:
            modules = session.scalars(
                select(Module).where(Module.topic_id == self.job.topic_id)
            ).all()
            return {
                m.number: ModuleLoad(m.number, m.tokens, m.items, m.capacity_tokens)
                for m in modules
            }


class _Progress:
    """Steps of all the job's modules counted as one run: heartbeats (which renew the lease)
    at least every second, progress events spread over the job, a stop honoured at each step.
    The total is the modules' budgets; a module that stops early leaves the rest unspent, so
    the count is always of steps trained."""

    def __init__(self, pipeline: JobPipeline, total: int) -> None:
        self.pipeline = pipeline
        self.total = total
        # Steps trained by the job's finished modules, and by the module training now.
        self.done = 0
        self.module_steps = 0
        self.last_beat = 0.0
        self.last_step = time.monotonic()

    def on_step(self, step: int, total: int, loss: float) -> None:
        pipeline = self.pipeline
        pipeline.running.check_stop()
        now = time.monotonic()
        if pipeline.observe_step is not None:
            pipeline.observe_step(now - self.last_step)
        self.last_step = now
        self.module_steps = step
        step += self.done
        event = step % max(1, self.total // PROGRESS_EVENTS_PER_JOB) == 0
        if event or step == self.total or now - self.last_beat > 1.0 or step == 1:
            queue.heartbeat(
                pipeline.db,
                pipeline.job.id,
                pipeline.running.worker_id,
                pipeline.settings.lease_seconds,
                step=step,
                total_steps=self.total,
                loss=loss,
                event=event or step == self.total,
            )
            self.last_beat = now

    def module_trained(self) -> int:
        """The steps the module just trained took, counted into the job's."""
        steps, self.module_steps = self.module_steps, 0
        self.done += steps
        return steps
