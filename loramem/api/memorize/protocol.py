"""POST /memorize and /jobs: the knowledge a client gives, and the training job it starts."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StringConstraints,
    model_validator,
)

from loramem.api.protocol import StrictBody, TopicName
from loramem.core.options import TrainingOptions
from loramem.core.topics import AUTO_TOPIC

MAX_ITEMS = 10_000


def _readable(value: str) -> str:
    """Refuses text that holds no words, or that is not text at all (binary bytes, controls)."""
    if not any(c.isalnum() for c in value):
        raise ValueError("the text holds no words")
    unreadable = sum(
        1
        for c in value
        if c not in "\n\r\t" and unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn")
    )
    if "\x00" in value or unreadable > len(value) // 100:
        raise ValueError("the text looks like binary data, not text")
    return value


# The size limit of a text is a setting (LORAMEM_MAX_DOCUMENT_CHARS, 413 past it).
Text = Annotated[str, StringConstraints(min_length=1), AfterValidator(_readable)]
ShortText = Annotated[
    str, StringConstraints(min_length=1, max_length=4_000), AfterValidator(_readable)
]


class QAPair(StrictBody):
    question: ShortText
    answer: ShortText


class MemorizeRequest(StrictBody):
    topic: TopicName = Field(description="topic name: 1-64 chars of [a-z0-9._-], not 'auto'")
    text: Text | None = None
    documents: Annotated[list[Text], Field(max_length=MAX_ITEMS)] | None = None
    qa: Annotated[list[QAPair], Field(max_length=MAX_ITEMS)] | None = None
    options: TrainingOptions = Field(default_factory=TrainingOptions)

    @model_validator(mode="after")
    def _has_knowledge(self) -> MemorizeRequest:
        if self.topic == AUTO_TOPIC:
            raise ValueError(f"'{AUTO_TOPIC}' is reserved for routing and cannot name a topic")
        if not (self.text or self.documents or self.qa):
            raise ValueError("give at least one of text, documents or qa")
        return self


class MemorizeResponse(BaseModel):
    job_id: str
    topic: str
    status: str


class JobResponse(BaseModel):
    id: str
    topic: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    step: int
    total_steps: int | None
    loss: float | None
    adapter_version: int | None
    recall: float | None
    activated: bool | None
    attempts: int
    error: str | None
    # When a failed attempt's retry may start (queued until then).
    retry_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobEventResponse(BaseModel):
    kind: str
    data: dict[str, Any]
    created_at: datetime


class JobEventsResponse(BaseModel):
    job_id: str
    events: list[JobEventResponse]
