"""Generating: choose the topic (named, or by content), choose what serves it (its adapter, its
retrieved documents, both, or the base model), format the prompt, run the engine."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

from server.composition import ComposedAdapters
from server.config import ComposeMethod, Settings
from server.engines import Engine, EngineError, GenerationOutput, LoRAAdapter, SamplingParams
from server.errors import APIError
from server.metrics import Metrics
from server.prompting import context_block, question_ids, with_context
from server.retrieval import Hit
from server.retrieval.refresh import IndexRefresher
from server.routing import ActiveAdapter, AdapterRouter
from server.schemas import (
    AUTO_TOPIC,
    AdapterUsed,
    GenerateRequest,
    GenerateResponse,
    Retrieved,
    ServedMode,
    Usage,
)


@dataclass(frozen=True)
class Prompt:
    """A request's prompt, before routing: the text that routing and retrieval read, and how to
    turn it into tokens with retrieved passages put in (None: without any)."""

    query: str
    to_ids: Callable[[str | None], list[int]]


@dataclass(frozen=True)
class Plan:
    """A request ready for the engine: its tokens, sampling, and what serves it."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    topic: str | None
    mode: ServedMode
    # The modules that answer, with their routing scores, and the adapter the engine runs (one
    # module's, or their composition)...
    modules: list[tuple[ActiveAdapter, float]]
    adapter: LoRAAdapter | None
    retrieved: list[Hit]
    # ...or, composed by confidence, the modules' adapters that each answer (rows of one batch).
    candidates: tuple[LoRAAdapter, ...] = ()


def candidate_id(request_id: str, number: int) -> str:
    return f"{request_id}:{number}"


def confidence(output: GenerationOutput) -> float:
    """How sure the model was of its answer: the mean log-probability of its tokens."""
    if output.logprob is None:
        return float("-inf")
    return output.logprob / max(len(output.token_ids), 1)


class GenerationService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        router: AdapterRouter,
        refresher: IndexRefresher,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.router = router
        self.refresher = refresher
        self.index = refresher.index
        self.metrics = metrics
        self.composed = ComposedAdapters(
            settings.resolved_adapter_dir, engine, settings.merge_density
        )
        # Generations admitted and not finished: bounded, so that overload is refused, not queued.
        self.pending = 0

    async def plan(
        self,
        prompt: Prompt,
        topic: str | None,
        mode: str,
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: str | list[str] | None,
        seed: int | None,
        ignore_eos: bool = False,
        top_k: int | None = None,
        compose: ComposeMethod | None = None,
    ) -> Plan:
        """Routes and checks a request (/generate and /v1 both).

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
        score = 1.0
        if topic == AUTO_TOPIC:
            topic, score = await self._route_by_content(prompt.query)
        elif topic is None and mode in ("lora", "rag", "hybrid"):
            raise APIError(400, f"mode '{mode}' needs a topic", param="topic")
        method = compose or self.settings.compose
        # Each module answers alone by confidence; any other method makes one adapter of them.
        rank_limit = None if method == "confident" else self.settings.max_lora_rank
        served, modules, hits = await self._serve(
            topic, mode, prompt.query, score, top_k or self.settings.route_top_k, rank_limit
        )
        adapter = None
        candidates: tuple[LoRAAdapter, ...] = ()
        if len(modules) == 1:
            adapter = modules[0][0].adapter
        elif modules and method == "confident":
            candidates = tuple(m.adapter for m, _ in modules)
        elif modules:
            adapter = await self.composed.get(
                modules[0][0].topic_id, [(m.adapter, score) for m, score in modules], method
            )
        prompt_ids = prompt.to_ids(context_block([h.text for h in hits]))
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
            ignore_eos=ignore_eos,
            logprobs=bool(candidates),
        )
        return Plan(
            uuid.uuid4().hex, prompt_ids, params, topic, served, modules, adapter, hits, candidates
        )

    async def _route_by_content(self, query: str) -> tuple[str | None, float]:
        """The topic whose knowledge best matches `query`, or None (the base model) below the
        threshold."""
        ranked = await asyncio.to_thread(self.index.route, query)
        threshold = self.settings.route_min_score
        if threshold is None:
            threshold = self.index.scorer.default_min_score
        if not ranked or ranked[0].score < threshold:
            return None, ranked[0].score if ranked else 0.0
        return ranked[0].topic, ranked[0].score

    async def _serve(
        self,
        topic: str | None,
        mode: str,
        query: str,
        topic_score: float,
        top_k: int,
        rank_limit: int | None,
    ) -> tuple[ServedMode, list[tuple[ActiveAdapter, float]], list[Hit]]:
        """What serves the request. `auto`: the topic's adapters when it has some, else its
        documents (a topic is useful before its first training ends)."""
        if topic is None:
            return "base", [], []
        if mode == "base":
            await self.router.require_topic(topic)  # unknown topics are 404 in every mode
            return "base", [], []
        active: list[ActiveAdapter] = []
        if mode == "auto":
            active = await self.router.find(topic)
            mode = "lora" if active else "rag"
        elif mode in ("lora", "hybrid"):
            active = await self.router.resolve(topic)
        else:
            await self.router.require_topic(topic)
        modules = await self._choose_modules(topic, active, query, topic_score, top_k, rank_limit)
        hits: list[Hit] = []
        if mode in ("rag", "hybrid"):
            hits = await asyncio.to_thread(
                self.index.search, query, topic, self.settings.rag_passages
            )
        return cast(ServedMode, mode), modules, hits

    async def _choose_modules(
        self,
        topic: str,
        active: list[ActiveAdapter],
        query: str,
        topic_score: float,
        top_k: int,
        rank_limit: int | None,
    ) -> list[tuple[ActiveAdapter, float]]:
        """The topic's modules that best match the request: its only one, or the top k by the
        passages each learned (a module no passage points to yet comes last), as many of them
        as fit `rank_limit` together."""
        if len(active) <= 1:
            return [(a, topic_score) for a in active]
        ranked = dict(await asyncio.to_thread(self.index.rank_modules, query, topic))
        if any(a.module not in ranked for a in active):
            # A module published since the index's last poll: its passages are in the registry.
            await asyncio.to_thread(self.refresher.refresh)
            ranked = dict(await asyncio.to_thread(self.index.rank_modules, query, topic))
        order = sorted(active, key=lambda a: (-ranked.get(a.module, -1.0), a.module))
        chosen: list[tuple[ActiveAdapter, float]] = []
        rank = 0
        for module in order[:top_k]:
            if chosen and rank_limit is not None and rank + module.adapter.rank > rank_limit:
                break
            chosen.append((module, ranked.get(module.module, 0.0)))
            rank += module.adapter.rank
        return chosen

    async def _plan(self, request: GenerateRequest) -> Plan:
        tokenizer = self.engine.tokenizer
        return await self.plan(
            Prompt(
                request.prompt,
                lambda context: question_ids(tokenizer, with_context(context, request.prompt)),
            ),
            request.topic,
            request.mode,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
            ignore_eos=request.ignore_eos,
            top_k=request.top_k,
            compose=request.compose,
        )

    def _response(
        self, request: GenerateRequest, plan: Plan, output: GenerationOutput
    ) -> GenerateResponse:
        modules = plan.modules
        if plan.candidates:  # the module whose answer was kept comes first
            ids = [candidate_id(plan.request_id, n) for n in range(len(modules))]
            kept = ids.index(output.request_id)
            modules = [modules[kept], *modules[:kept], *modules[kept + 1 :]]
        adapters = [
            AdapterUsed(topic=m.topic, version=m.version, module=m.module, score=score)
            for m, score in modules
        ]
        return GenerateResponse(
            text=output.text,
            topic=plan.topic,
            adapters=adapters,
            mode=plan.mode,
            retrieved=[Retrieved(text=h.text, score=h.score) for h in plan.retrieved],
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
        generated = (
            self._most_confident(plan)
            if plan.candidates
            else self.engine.generate(plan.request_id, plan.prompt_ids, plan.params, plan.adapter)
        )
        try:
            async for output in generated:
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

    async def _most_confident(self, plan: Plan) -> AsyncIterator[GenerationOutput]:
        """Every candidate module answers (rows of the same batches); yields the answer the
        model was surest of, once all have finished. Streaming waits for it too."""

        async def answer(number: int, adapter: LoRAAdapter) -> GenerationOutput:
            last: GenerationOutput | None = None
            request_id = candidate_id(plan.request_id, number)
            async for output in self.engine.generate(
                request_id, plan.prompt_ids, plan.params, adapter
            ):
                last = output
            assert last is not None
            return last

        answers = [
            asyncio.create_task(answer(n, adapter)) for n, adapter in enumerate(plan.candidates)
        ]
        try:
            finals = await asyncio.gather(*answers)
        finally:
            for task in answers:  # a request gone: its candidates stop too
                task.cancel()
        yield max(finals, key=confidence)

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
