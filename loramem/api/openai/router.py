"""OpenAI-compatible API under /v1: models, chat completions, completions (streaming too).

Errors keep the common envelope, which is OpenAI's shape: `{"error": {"type", "message", "param"}}`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from loramem.api.admin.serving import TopicService
from loramem.api.dependencies import Generation, State
from loramem.api.openai.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelList,
)
from loramem.api.openai.serving import OpenAIServing
from loramem.api.openai.serving import list_models as list_models_of
from loramem.api.streaming import sse

router = APIRouter(prefix="/v1", tags=["openai"])

STREAMED: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


def get_serving(state: State, generation: Generation) -> OpenAIServing:
    return OpenAIServing(state.settings, generation)


Serving = Annotated[OpenAIServing, Depends(get_serving)]


@router.get("/models", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    return await asyncio.to_thread(
        list_models_of, state.settings, TopicService(state.settings, state.db)
    )


@router.post("/chat/completions", response_model=ChatCompletion, responses=STREAMED)
async def chat_completions(
    body: ChatCompletionRequest, serving: Serving
) -> ChatCompletion | StreamingResponse:
    generation = await serving.start_chat(body)
    if body.stream:
        return sse(serving.chat_chunks(body, generation), generation.release)
    return await serving.chat(body, generation)


@router.post("/completions", response_model=Completion, responses=STREAMED)
async def completions(body: CompletionRequest, serving: Serving) -> Completion | StreamingResponse:
    generation = await serving.start_completion(body)
    if body.stream:
        return sse(serving.completion_chunks(body, generation), generation.release)
    return await serving.completion(body, generation)
