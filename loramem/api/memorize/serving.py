"""Memorizing: knowledge is stored durably and a training job queued, in one transaction."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from loramem.api.memorize.protocol import (
    JobEventResponse,
    JobEventsResponse,
    JobResponse,
    MemorizeRequest,
    QAPair,
)
from loramem.core.base_model import resolve_base_model
from loramem.core.errors import Conflict, InvalidRequest, NotFound, TooLarge
from loramem.core.registry import queue
from loramem.core.registry.db import Database
from loramem.core.registry.models import Document, DocumentKind, Job, JobEvent, Topic
from loramem.core.settings import Settings
from loramem.trainer.lora_trainer import longest_trainable
from loramem.trainer.modules import module_capacity, parts_within
from loramem.trainer.training_data import qa_example_tokens


@dataclass(frozen=True)
class MemorizeResult:
    job_id: str
    topic: str
    status: str
    created: bool


def job_response(job: Job, topic: str) -> JobResponse:
    return JobResponse(
        id=job.id,
        topic=topic,
        status=job.status,
        progress=job.progress,
        step=job.step,
        total_steps=job.total_steps,
        loss=job.loss,
        adapter_version=job.adapter_version,
        recall=job.recall,
        activated=job.activated,
        attempts=job.attempts,
        error=job.error,
        retry_at=job.retry_at,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


class MemoryService:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._limits = _TrainingLimits(settings)

    def memorize(self, request: MemorizeRequest, idempotency_key: str | None) -> MemorizeResult:
        self._check(request)
        try:
            return self._memorize(request, idempotency_key)
        except IntegrityError:
            # A concurrent request created the same topic or used the same key first.
            return self._memorize(request, idempotency_key)

    def _check(self, request: MemorizeRequest) -> None:
        """What the request's schema cannot know: limits and generators configured here."""
        limit = self.settings.max_document_chars
        if request.text is not None and len(request.text) > limit:
            raise TooLarge(f"the text is longer than {limit} characters", param="text")
        for i, document in enumerate(request.documents or []):
            if len(document) > limit:
                raise TooLarge(f"document {i} is longer than {limit} characters", param="documents")
        self._limits.check_pairs(request.qa or [])
        generator = request.options.generator
        if generator == "endpoint" and not self.settings.augment_endpoint_url:
            raise InvalidRequest(
                "no generator endpoint is configured (LORAMEM_AUGMENT_ENDPOINT_URL)",
                param="options.generator",
            )

    def _memorize(self, request: MemorizeRequest, idempotency_key: str | None) -> MemorizeResult:
        with self.db.session(immediate=True) as session:
            if idempotency_key is not None:
                replay = self._replay(session, request, idempotency_key)
                if replay is not None:
                    return replay
            topic = session.scalars(select(Topic).where(Topic.name == request.topic)).one_or_none()
            if topic is None:
                topic = Topic(name=request.topic)
                session.add(topic)
                session.flush()
            job = queue.enqueue(
                session,
                topic,
                request.options.model_dump(exclude_unset=True),
                max_attempts=self.settings.max_job_attempts,
                idempotency_key=idempotency_key,
            )
            session.add_all(self._documents(request, topic.id, job.id))
            return MemorizeResult(job.id, topic.name, job.status, created=True)

    def _documents(self, request: MemorizeRequest, topic_id: str, job_id: str) -> list[Document]:
        """The request's knowledge as stored documents: a QA pair each, and a text each, or a
        part each of a text longer than one module holds."""
        documents = [
            Document(
                topic_id=topic_id,
                job_id=job_id,
                kind=DocumentKind.QA,
                question=p.question,
                answer=p.answer,
            )
            for p in request.qa or []
        ]
        texts = [request.text] if request.text else []
        texts += request.documents or []
        documents += [
            Document(topic_id=topic_id, job_id=job_id, kind=DocumentKind.TEXT, text=part)
            for text in texts
            for part in self._limits.parts(text, request.options.rank)
        ]
        return documents

    @staticmethod
    def _replay(session: Session, request: MemorizeRequest, key: str) -> MemorizeResult | None:
        row = session.execute(
            select(Job, Topic.name).join(Topic).where(Job.idempotency_key == key)
        ).one_or_none()
        if row is None:
            return None
        job, topic = row
        if topic != request.topic:
            raise Conflict(
                "this Idempotency-Key was used for another topic", param="Idempotency-Key"
            )
        return MemorizeResult(job.id, topic, job.status, created=False)

    def job(self, job_id: str) -> JobResponse:
        with self.db.session() as session:
            row = session.execute(
                select(Job, Topic.name).join(Topic).where(Job.id == job_id)
            ).one_or_none()
            if row is None:
                raise NotFound("job")
            return job_response(*row)

    def cancel(self, job_id: str) -> JobResponse:
        with self.db.session(immediate=True) as session:
            row = session.execute(
                select(Job, Topic.name).join(Topic).where(Job.id == job_id)
            ).one_or_none()
            if row is None:
                raise NotFound("job")
            job, topic = row
            if job.status in queue.FINISHED and job.status != "cancelled":
                raise Conflict(f"job already {job.status}")
            queue.cancel(session, job)
            return job_response(job, topic)

    def events(self, job_id: str) -> JobEventsResponse:
        with self.db.session() as session:
            if session.get(Job, job_id) is None:
                raise NotFound("job")
            events = session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            ).all()
            return JobEventsResponse(
                job_id=job_id,
                events=[
                    JobEventResponse(kind=e.kind, data=e.data, created_at=e.created_at)
                    for e in events
                ],
            )


class _TrainingLimits:
    """What training can take, known before a job is queued; the base model's tokenizer and
    config are loaded when first needed, once.

    A QA pair is trained as one example, which is never split: a pair longer than the training
    memory bound allows (LORAMEM_TRAIN_MEMORY_GB) would fail its job, so it is refused. A text
    longer than a module's capacity (LORAMEM_MODULE_TOKENS_PER_RANK x rank) is stored as parts
    that each fit one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loading = threading.Lock()
        self._loaded: tuple[Any, int, int] | None = None

    def check_pairs(self, pairs: list[QAPair]) -> None:
        if not pairs:
            return
        tokenizer, limit, overhead = self._load()
        for i, pair in enumerate(pairs):
            # A byte-level tokenizer's token holds at least one byte of the text: a pair whose
            # bytes fit needs no tokenizing.
            if len(pair.question.encode()) + len(pair.answer.encode()) + overhead <= limit:
                continue
            tokens = qa_example_tokens(tokenizer, pair.question, pair.answer)
            if tokens > limit:
                raise TooLarge(
                    f"QA pair {i} is {tokens} tokens long; training fits examples of at most "
                    f"{limit} tokens within the training memory bound of "
                    f"{self.settings.train_memory_gb:g} GiB (LORAMEM_TRAIN_MEMORY_GB)",
                    param=f"qa.{i}",
                )

    def parts(self, text: str, rank: int) -> list[str]:
        capacity = module_capacity(
            rank, self.settings.module_tokens_per_rank, self.settings.module_max_tokens
        )
        if len(text.encode()) <= capacity:
            return [text]  # a token holds at least one byte: it fits, untokenized
        return parts_within(self._load()[0], text, capacity)

    def _load(self) -> tuple[Any, int, int]:
        with self._loading:
            if self._loaded is None:
                from transformers import AutoConfig, AutoTokenizer

                folder = resolve_base_model(self.settings)
                tokenizer = AutoTokenizer.from_pretrained(folder)
                memory_bytes = int(self.settings.train_memory_gb * 2**30)
                limit = longest_trainable(AutoConfig.from_pretrained(folder), memory_bytes)
                # The chat template's tokens, and a few for pieces that hold no byte of the text.
                overhead = qa_example_tokens(tokenizer, "", "") + 8
                self._loaded = (tokenizer, limit, overhead)
            return self._loaded
