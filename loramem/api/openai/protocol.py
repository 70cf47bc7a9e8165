"""The OpenAI-compatible protocol under /v1: models, chat completions, completions.

Fields of OpenAI's API that change nothing here (user, n=1, ...) are accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from loramem.core.settings import ComposeMethod

Content = Annotated[str, StringConstraints(max_length=32_000)]
FinishReason = Literal["stop", "length"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: Content


class SamplingRequest(BaseModel):
    """What both completion requests share."""

    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="the base model's id (plain generation), a topic (its memory), or 'auto'"
    )
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=8)] | None = None
    seed: int | None = None
    # vLLM's extension: generate exactly max_tokens, past the end of text (for benchmarks).
    ignore_eos: bool = False
    # loramem's extensions (the openai client sends them in `extra_body`), as in /generate.
    top_k: int | None = Field(None, ge=1, le=8)
    compose: ComposeMethod | None = None
    confident_tokens: int | None = Field(None, ge=0, le=4096)
    stream: bool = False
    n: Literal[1] = 1


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]


class CompletionRequest(SamplingRequest):
    prompt: Content


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "loramem"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion; the last carries the usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class Completion(BaseModel):
    """A completion, or one server-sent event of a streamed one (finish_reason null until the
    last)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
