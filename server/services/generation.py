"""Generating: pick the topic's adapter (or none), format the prompt, run the engine."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.config import Settings
from server.engines import Engine, EngineError, GenerationOutput, SamplingParams
from server.errors import APIError
from server.metrics import Metrics
from server.prompting import question_ids
from server.routing import ActiveAdapter, AdapterRouter
from server.schemas import AUTO_TOPIC, AdapterUsed, GenerateRequest, GenerateResponse, Usage


@dataclass(frozen=True)
class Plan:
    """A request ready for the engine: its tokens, sampling, and the adapter that serves it."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    route: ActiveAdapter | None


class GenerationService:
    def __init__(
        self, settings: Settings, engine: Engine, router: AdapterRouter, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.router = router
        self.metrics = metrics
        # Generations admitted and not finished: bounded, so that overload is refused, not queued.
        self.pending = 0

    async def plan(
        self,
        prompt_ids: list[int],
        topic: str | None,
        mode: str,
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: str | list[str] | None,
        seed: int | None,
    ) -> Plan:
        """Routes and checks a request whose prompt is already tokens (/generate and /v1 both).

        Admission is checked here, before any response starts (a stream cannot turn into a 429
        later); the count itself moves when generation starts and ends (`outputs`).
        """
        if self.pending >= self.settings.max_pending_requests:
            self.metrics.refused.inc()
            raise APIError(
                429,
                f"the server is busy ({self.pending} generations in progress); retry shortly",
                headers={"Retry-After": "1"},
            )
        if topic == AUTO_TOPIC:
            raise APIError(
                400,
                "routing by content (topic 'auto') is not available yet; name a topic",
                param="topic",
            )
        if mode in ("rag", "hybrid"):
            raise APIError(400, f"mode '{mode}' is not available yet", param="mode")
        if mode == "lora" and topic is None:
            raise APIError(400, "mode 'lora' needs a topic", param="topic")
        route = None
        if topic is not None and mode == "base":
            await self.router.require_topic(topic)  # unknown topics are 404 in every mode
        elif topic is not None:
            route = await self.router.resolve(topic)
        room = self.engine.max_model_len - len(prompt_ids)
        if room < 1:
            raise APIError(
                400,
                f"the prompt is {len(prompt_ids)} tokens; the model takes "
                f"{self.engine.max_model_len} in all",
                param="prompt",
            )
        params = SamplingParams(
            max_tokens=min(max_tokens, self.settings.max_new_tokens, room),
            temperature=temperature,
            top_p=top_p,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            seed=seed,
        )
        return Plan(uuid.uuid4().hex, prompt_ids, params, route)

    async def _plan(self, request: GenerateRequest) -> Plan:
        return await self.plan(
            question_ids(self.engine.tokenizer, request.prompt),
            request.topic,
            request.mode,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
        )

    def _response(
        self, request: GenerateRequest, plan: Plan, output: GenerationOutput
    ) -> GenerateResponse:
        adapters = (
            [AdapterUsed(topic=plan.route.topic, version=plan.route.version, score=1.0)]
            if plan.route
            else []
        )
        return GenerateResponse(
            text=output.text,
            topic=request.topic,
            adapters=adapters,
            mode="lora" if plan.route else "base",
            finish_reason=output.finish_reason,
            usage=Usage(
                prompt_tokens=len(plan.prompt_ids), completion_tokens=len(output.token_ids)
            ),
        )

    async def outputs(self, plan: Plan) -> AsyncIterator[GenerationOutput]:
        self.pending += 1
        started = time.monotonic()
        first = True
        finished = False
        try:
            async for output in self.engine.generate(
                plan.request_id,
                plan.prompt_ids,
                plan.params,
                plan.route.adapter if plan.route else None,
            ):
                finished = output.finished
                if first and output.token_ids:
                    self.metrics.time_to_first_token.observe(time.monotonic() - started)
                    first = False
                if finished:
                    self.metrics.generated_tokens.inc(len(output.token_ids))
                yield output
        except EngineError as error:
            raise APIError(
                503, "the engine could not serve this request", type="engine_error"
            ) from error
        finally:
            self.pending -= 1
            if not finished:
                await self.engine.abort(plan.request_id)

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        plan = await self._plan(request)
        last: GenerationOutput | None = None
        async for output in self.outputs(plan):
            last = output
        assert last is not None
        return self._response(request, plan, last)

    async def stream(self, request: GenerateRequest) -> AsyncIterator[dict[str, object]]:
        """Yields `{"text": delta}` chunks, then the whole response as the last chunk."""
        plan = await self._plan(request)

        async def chunks() -> AsyncIterator[dict[str, object]]:
            sent = 0
            async for output in self.outputs(plan):
                if len(output.text) > sent:
                    yield {"text": output.text[sent:]}
                    sent = len(output.text)
                if output.finished:
                    yield {"done": True, **self._response(request, plan, output).model_dump()}

        return chunks()
