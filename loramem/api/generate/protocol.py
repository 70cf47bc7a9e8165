"""POST /generate: a prompt, and how to serve it; the answer, and what served it."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from loramem.api.protocol import StrictBody, TopicName
from loramem.core.settings import ComposeMethod
from loramem.serving.planner import GenerationMode, ServedMode


class GenerateRequest(StrictBody):
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
    confident_tokens: int | None = Field(
        None,
        ge=0,
        le=4096,
        description="composing by confidence: the tokens each module says before the surest goes "
        "on alone (0: every module finishes its answer)",
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


class GenerateResponse(BaseModel):
    text: str
    topic: str | None = Field(description="the topic that served the request (chosen by 'auto')")
    adapters: list[AdapterUsed] = Field(description="adapters used, with their routing scores")
    mode: ServedMode
    retrieved: list[Retrieved] = Field(description="passages put into the prompt (rag, hybrid)")
    finish_reason: str | None
    usage: Usage
