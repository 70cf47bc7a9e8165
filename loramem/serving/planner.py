"""Planning a request: route (which topic) -> resolve (its adapters) -> retrieve (its passages)
-> plan (the prompt's tokens, sampling, and the one adapter or the candidates the engine runs).

Every protocol plans through here, so `/generate` and `/v1` serve a topic the same way. Failures
are domain errors; the API decides their status.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

from loramem.core.decoding import SamplingParams
from loramem.core.errors import InvalidRequest
from loramem.core.prompting import context_block
from loramem.core.settings import ComposeMethod, Settings
from loramem.core.topics import AUTO_TOPIC
from loramem.serving.adapters import ActiveAdapter, AdapterTable
from loramem.serving.composition import ComposedAdapters
from loramem.serving.engines import Engine, LoRAAdapter
from loramem.serving.retrieval import Hit
from loramem.serving.routing import ContentRouter

GenerationMode = Literal["auto", "lora", "rag", "hybrid", "base"]
ServedMode = Literal["lora", "rag", "hybrid", "base"]


@dataclass(frozen=True)
class Prompt:
    """A request's prompt, before routing: the text that routing and retrieval read, and how to
    turn it into tokens with retrieved passages put in (None: without any)."""

    query: str
    to_ids: Callable[[str | None], list[int]]


@dataclass(frozen=True)
class Asked:
    """What a client asked for, whatever its protocol."""

    topic: str | None
    mode: GenerationMode
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False
    top_k: int | None = None
    compose: ComposeMethod | None = None
    confident_tokens: int | None = None


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
    # ...or, composed by confidence, the modules' adapters that each answer (rows of one batch),
    # each saying this many tokens before the surest goes on alone (0: all finish).
    candidates: tuple[LoRAAdapter, ...] = ()
    confident_tokens: int = 0


class Planner:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        adapters: AdapterTable,
        router: ContentRouter,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.adapters = adapters
        self.router = router
        self.composed = ComposedAdapters(
            settings.resolved_adapter_dir, engine, settings.merge_density
        )

    async def plan(self, prompt: Prompt, asked: Asked) -> Plan:
        topic, mode, score = asked.topic, asked.mode, 1.0
        if topic == AUTO_TOPIC:
            topic, score = await self.router.topic(prompt.query)
        elif topic is None and mode in ("lora", "rag", "hybrid"):
            raise InvalidRequest(f"mode '{mode}' needs a topic", param="topic")
        method = asked.compose or self.settings.compose
        # Each module answers alone by confidence; any other method makes one adapter of them.
        rank_limit = None if method == "confident" else self.settings.max_lora_rank
        served, modules, hits = await self._serve(
            topic, mode, prompt.query, score, asked.top_k or self.settings.route_top_k, rank_limit
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
            raise InvalidRequest(
                f"the prompt is {len(prompt_ids)} tokens; the model takes "
                f"{self.engine.max_model_len} in all",
                param="prompt",
            )
        stop = asked.stop
        params = SamplingParams(
            max_tokens=min(asked.max_tokens, self.settings.max_new_tokens, room),
            temperature=asked.temperature,
            top_p=asked.top_p,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            seed=asked.seed,
            ignore_eos=asked.ignore_eos,
            logprobs=bool(candidates),
        )
        confident_tokens = asked.confident_tokens
        return Plan(
            uuid.uuid4().hex,
            prompt_ids,
            params,
            topic,
            served,
            modules,
            adapter,
            hits,
            candidates,
            self.settings.confident_tokens if confident_tokens is None else confident_tokens,
        )

    async def _serve(
        self,
        topic: str | None,
        mode: GenerationMode,
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
            await self.adapters.require_topic(topic)  # unknown topics are 404 in every mode
            return "base", [], []
        active: list[ActiveAdapter] = []
        if mode == "auto":
            active = await self.adapters.find(topic)
            mode = "lora" if active else "rag"
        elif mode in ("lora", "hybrid"):
            active = await self.adapters.resolve(topic)
        else:
            await self.adapters.require_topic(topic)
        modules = await self.router.modules(topic, active, query, topic_score, top_k, rank_limit)
        hits: list[Hit] = []
        if mode in ("rag", "hybrid"):
            hits = await asyncio.to_thread(
                self.router.index.search, query, topic, self.settings.rag_passages
            )
        return cast(ServedMode, mode), modules, hits
