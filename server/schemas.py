"""Request and response bodies of the HTTP API (the contract in DESIGN.md)."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from server.config import ComposeMethod
from trainer_worker.options import TrainingOptions

TOPIC_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
TopicName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TOPIC_PATTERN)]
# Reserved: in /generate it asks the router to choose the topic.
AUTO_TOPIC = "auto"

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QAPair(_Strict):
    question: ShortText
    answer: ShortText


class MemorizeRequest(_Strict):
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


GenerationMode = Literal["auto", "lora", "rag", "hybrid", "base"]


class GenerateRequest(_Strict):
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=32_000)]
    topic: TopicName | None = Field(None, description="a topic, or 'auto' to let the router decide")
    mode: GenerationMode = "auto"
    max_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 is greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: (
        Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(max_length=8)]
        | str
        | None
    ) = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    ignore_eos: bool = Field(
        False, description="generate exactly max_tokens, past the end of text (for benchmarks)"
    )
    top_k: int | None = Field(
        None, ge=1, le=8, description="modules of the topic that answer (composed if > 1)"
    )
    compose: ComposeMethod | None = Field(
        None, description="how more than one module is composed: confident, sum, weighted or ties"
    )
    stream: bool = False


class AdapterUsed(BaseModel):
    topic: str
    version: int
    score: float
    module: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class Retrieved(BaseModel):
    text: str
    score: float


ServedMode = Literal["lora", "rag", "hybrid", "base"]


class GenerateResponse(BaseModel):
    text: str
    topic: str | None = Field(description="the topic that served the request (chosen by 'auto')")
    adapters: list[AdapterUsed] = Field(description="adapters used, with their routing scores")
    mode: ServedMode
    retrieved: list[Retrieved] = Field(description="passages put into the prompt (rag, hybrid)")
    finish_reason: str | None
    usage: Usage


class ErrorDetail(BaseModel):
    type: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
