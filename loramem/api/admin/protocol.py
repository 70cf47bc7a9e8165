"""/admin: what an operator reads and steers (topics, their versions and generated data, jobs, the
engine, recent requests)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from loramem.api.memorize.protocol import JobResponse


class _Topic(BaseModel):
    name: str
    active_version: int | None = Field(description="the newest version any module serves")
    active_recall: float | None
    modules: int
    created_at: datetime
    updated_at: datetime


class TopicSummary(_Topic):
    versions: int
    documents: int


class TopicList(BaseModel):
    topics: list[TopicSummary]


class StoredDocument(BaseModel):
    id: int
    kind: str
    question: str | None
    answer: str | None
    text: str | None
    module: int | None = Field(description="the module that learned it; null until trained")


class GeneratedItemView(BaseModel):
    id: int
    document_id: int
    generator: str
    kind: str
    question: str | None
    answer: str | None
    text: str | None
    held_out: bool = Field(description="kept out of training: a recall probe")
    source: str | None = Field(description="the sentence it was read from")
    kept: bool
    rejected: str | None = Field(description="why its check rejected it")


class KnowledgeModule(BaseModel):
    module: int
    active_version: int | None
    tokens: int
    items: int
    capacity_tokens: int


class VersionView(BaseModel):
    version: int
    module: int
    active: bool
    recall: float | None
    rank: int
    sha256: str
    size_bytes: int
    job_id: str | None
    created_at: datetime


class TopicDetail(_Topic):
    documents: list[StoredDocument]
    generated: list[GeneratedItemView]
    knowledge_modules: list[KnowledgeModule]
    versions: list[VersionView]


class ActivateRequest(BaseModel):
    version: int = Field(ge=1)


class Forgotten(BaseModel):
    topic: str
    versions: int
    documents: int
    generated: int


class JobList(BaseModel):
    jobs: list[JobResponse]


class EngineView(BaseModel):
    engine: str
    adapters: list[str] = Field(description="adapters resident in the engine")
    base_model: str
    train_precision: str
    active_versions: dict[str, int] = Field(description="per topic, its newest active version")
    active_modules: dict[str, int] = Field(description="per 'topic/module', its active version")
    memory_rss_bytes: int | None
    # The HF engine's.
    precision: str | None = Field(None, description="the base weights': bf16 or fp32")
    max_resident_adapters: int | None = None
    max_batch_size: int | None = None
    stats: dict[str, int] | None = None
    # vLLM's.
    max_loras: int | None = None
    max_cpu_loras: int | None = None
    max_lora_rank: int | None = None
    max_model_len: int | None = None
    pinned: list[str] | None = None


class RecentRequest(BaseModel):
    at: float
    method: str | None
    path: str
    status: int
    ms: float


class Activity(BaseModel):
    recent: list[RecentRequest]
    by_status: dict[str, int]
