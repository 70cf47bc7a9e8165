"""OpenAI-compatible API under /v1: models, chat completions, completions (streaming too).

`model` is the base model's id (plain generation), a topic (its memory answers) or `auto`.
Errors keep the common envelope, which is OpenAI's shape: `{"error": {"type", "message", "param"}}`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from server.config import ComposeMethod
from server.dependencies import Generation, State
from server.engines import GenerationOutput
from server.prompting import with_context
from server.services.generation import GenerationService, Plan, Prompt
from server.services.topics import TopicService

router = APIRouter(prefix="/v1", tags=["openai"])

Content = Annotated[str, StringConstraints(max_length=32_000)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: Content


class _Sampling(BaseModel):
    # Fields of OpenAI's API that change nothing here (user, n=1, ...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, StringConstraints(min_length=1, max_length=256)]
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
    stream: bool = False
    n: Literal[1] = 1


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]


class CompletionRequest(_Sampling):
    prompt: Content


def base_model_id(state: Any) -> str:
    """The id clients use for the base model: its name, not the folder it was loaded from."""
    return Path(state.settings.base_model).name


def _topic_and_mode(state: Any, model: str) -> tuple[str | None, str]:
    return (None, "base") if model == base_model_id(state) else (model, "auto")


@router.get("/models")
async def list_models(state: State) -> dict[str, Any]:
    topics = await asyncio.to_thread(TopicService(state.settings, state.db).summaries)
    created = int(time.time())
    ids = [base_model_id(state), *(t["name"] for t in topics), "auto"]
    return {
        "object": "list",
        "data": [
            {"id": i, "object": "model", "created": created, "owned_by": "loramem"} for i in ids
        ],
    }


async def _plan(generation: GenerationService, state: Any, body: _Sampling, prompt: Prompt) -> Plan:
    topic, mode = _topic_and_mode(state, body.model)
    return await generation.plan(
        prompt,
        topic,
        mode,
        max_tokens=body.max_completion_tokens or body.max_tokens or 256,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
        top_k=body.top_k,
        compose=body.compose,
    )


def _finish(output: GenerationOutput) -> str:
    return "length" if output.finish_reason == "length" else "stop"


def _usage(plan: Plan, output: GenerationOutput) -> dict[str, int]:
    completion = len(output.token_ids)
    return {
        "prompt_tokens": len(plan.prompt_ids),
        "completion_tokens": completion,
        "total_tokens": len(plan.prompt_ids) + completion,
    }


async def _final(generation: GenerationService, plan: Plan) -> GenerationOutput:
    last = None
    async for output in generation.outputs(plan):
        last = output
    assert last is not None
    return last


def _sse(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, generation: Generation, state: State
) -> dict[str, Any] | StreamingResponse:
    messages = [m.model_dump() for m in body.messages]
    # Routing and retrieval read the last user message; retrieved passages go into it.
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    query = messages[last_user]["content"] if last_user is not None else ""

    def to_ids(context: str | None) -> list[int]:
        turns = [dict(m) for m in messages]
        if last_user is not None:
            turns[last_user]["content"] = with_context(context, query)
        ids = generation.engine.tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    plan = await _plan(generation, state, body, Prompt(query, to_ids))
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": completion_id, "created": created, "model": body.model}
    if not body.stream:
        output = await _final(generation, plan)
        return {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": output.text},
                    "finish_reason": _finish(output),
                }
            ],
            "usage": _usage(plan, output),
        }

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        chunk = {**head, "object": "chat.completion.chunk"}
        yield {
            **chunk,
            "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
        }
        sent = 0
        async for output in generation.outputs(plan):
            if len(output.text) > sent:
                delta = {"content": output.text[sent:]}
                sent = len(output.text)
                yield {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            if output.finished:
                done = {"index": 0, "delta": {}, "finish_reason": _finish(output)}
                yield {**chunk, "choices": [done], "usage": _usage(plan, output)}

    return _sse(chunks())


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, generation: Generation, state: State
) -> dict[str, Any] | StreamingResponse:
    tokenizer = generation.engine.tokenizer
    prompt = Prompt(
        body.prompt,
        lambda context: list(tokenizer(with_context(context, body.prompt))["input_ids"]),
    )
    plan = await _plan(generation, state, body, prompt)
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
    }
    if not body.stream:
        output = await _final(generation, plan)
        choice = {
            "index": 0,
            "text": output.text,
            "finish_reason": _finish(output),
            "logprobs": None,
        }
        return {**head, "choices": [choice], "usage": _usage(plan, output)}

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        sent = 0
        async for output in generation.outputs(plan):
            text, sent = output.text[sent:], len(output.text)
            if text or output.finished:
                finish = _finish(output) if output.finished else None
                choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
                yield {**head, "choices": [choice]}

    return _sse(chunks())
