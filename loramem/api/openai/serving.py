"""/v1's serving class: `model` names the base model (plain generation), a topic (its memory
answers, as mode `auto`) or `auto` (routing by content); messages become the chat template's
prompt, and routing and retrieval read the last user message."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from loramem.api.admin.serving import TopicService
from loramem.api.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    FinishReason,
    Model,
    ModelList,
    SamplingRequest,
)
from loramem.core.prompting import chat_ids, with_context
from loramem.core.settings import Settings
from loramem.serving.engines import GenerationOutput
from loramem.serving.generation import Generation, GenerationService
from loramem.serving.planner import Asked, Plan, Prompt


def _finish(output: GenerationOutput) -> FinishReason:
    return "length" if output.finish_reason == "length" else "stop"


def _usage(plan: Plan, output: GenerationOutput) -> CompletionUsage:
    completion = len(output.token_ids)
    return CompletionUsage(
        prompt_tokens=len(plan.prompt_ids),
        completion_tokens=completion,
        total_tokens=len(plan.prompt_ids) + completion,
    )


def base_model_id(settings: Settings) -> str:
    """The id clients use for the base model: its name, not the folder it was loaded from."""
    return Path(settings.base_model).name


def list_models(settings: Settings, topics: TopicService) -> ModelList:
    """The base model, every topic, and `auto` (answered while the engine still starts)."""
    created = int(time.time())
    ids = [base_model_id(settings), *(t.name for t in topics.summaries()), "auto"]
    return ModelList(data=[Model(id=i, created=created) for i in ids])


class OpenAIServing:
    def __init__(self, settings: Settings, generation: GenerationService) -> None:
        self.settings = settings
        self.generation = generation

    async def _start(self, body: SamplingRequest, prompt: Prompt) -> Generation:
        base = body.model == base_model_id(self.settings)
        return await self.generation.start(
            prompt,
            Asked(
                topic=None if base else body.model,
                mode="base" if base else "auto",
                max_tokens=body.max_completion_tokens or body.max_tokens or 256,
                temperature=body.temperature,
                top_p=body.top_p,
                stop=body.stop,
                seed=body.seed,
                ignore_eos=body.ignore_eos,
                top_k=body.top_k,
                compose=body.compose,
                confident_tokens=body.confident_tokens,
            ),
        )

    async def start_chat(self, body: ChatCompletionRequest) -> Generation:
        messages = [m.model_dump() for m in body.messages]
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        query = messages[last_user]["content"] if last_user is not None else ""
        tokenizer = self.generation.engine.tokenizer

        def to_ids(context: str | None) -> list[int]:
            turns = [dict(m) for m in messages]
            if last_user is not None:
                turns[last_user]["content"] = with_context(context, query)
            return chat_ids(tokenizer, turns)

        return await self._start(body, Prompt(query, to_ids))

    async def chat(self, body: ChatCompletionRequest, generation: Generation) -> ChatCompletion:
        output = await generation.final()
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=body.model,
            choices=[
                ChatChoice(
                    message=AssistantMessage(content=output.text), finish_reason=_finish(output)
                )
            ],
            usage=_usage(generation.plan, output),
        )

    async def chat_chunks(
        self, body: ChatCompletionRequest, generation: Generation
    ) -> AsyncIterator[dict[str, Any]]:
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time())}

        def chunk(choice: ChatChunkChoice, usage: CompletionUsage | None = None) -> dict[str, Any]:
            return ChatCompletionChunk(
                **head, model=body.model, choices=[choice], usage=usage
            ).model_dump()

        yield chunk(ChatChunkChoice(delta=ChatDelta(role="assistant")))
        sent = 0
        async for output in generation.outputs():
            if len(output.text) > sent:
                yield chunk(ChatChunkChoice(delta=ChatDelta(content=output.text[sent:])))
                sent = len(output.text)
            if output.finished:
                done = ChatChunkChoice(delta=ChatDelta(), finish_reason=_finish(output))
                yield chunk(done, _usage(generation.plan, output))

    async def start_completion(self, body: CompletionRequest) -> Generation:
        tokenizer = self.generation.engine.tokenizer
        prompt = Prompt(
            body.prompt,
            lambda context: list(tokenizer(with_context(context, body.prompt))["input_ids"]),
        )
        return await self._start(body, prompt)

    async def completion(self, body: CompletionRequest, generation: Generation) -> Completion:
        output = await generation.final()
        return Completion(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=body.model,
            choices=[CompletionChoice(text=output.text, finish_reason=_finish(output))],
            usage=_usage(generation.plan, output),
        )

    async def completion_chunks(
        self, body: CompletionRequest, generation: Generation
    ) -> AsyncIterator[dict[str, Any]]:
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time())}
        sent = 0
        async for output in generation.outputs():
            text, sent = output.text[sent:], len(output.text)
            if text or output.finished:
                finish = _finish(output) if output.finished else None
                choice = CompletionChoice(text=text, finish_reason=finish)
                yield Completion(**head, model=body.model, choices=[choice]).model_dump()
