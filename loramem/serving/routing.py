"""Routing by content: the topic a request is about (`topic: "auto"`), and which of a topic's
modules know most about it. Both read the knowledge index, never the engine."""

from __future__ import annotations

import asyncio

from loramem.serving.adapters import ActiveAdapter
from loramem.serving.retrieval import KnowledgeIndex
from loramem.serving.retrieval.refresh import IndexRefresher


class ContentRouter:
    def __init__(self, refresher: IndexRefresher, min_score: float | None) -> None:
        self.refresher = refresher
        self.index: KnowledgeIndex = refresher.index
        # None: the scorer's own default.
        self.min_score = min_score

    async def topic(self, query: str) -> tuple[str | None, float]:
        """The topic whose knowledge best matches `query` with its score, or None (the base
        model) below the threshold."""
        ranked = await asyncio.to_thread(self.index.route, query)
        threshold = self.min_score
        if threshold is None:
            threshold = self.index.scorer.default_min_score
        if not ranked or ranked[0].score < threshold:
            return None, ranked[0].score if ranked else 0.0
        return ranked[0].topic, ranked[0].score

    async def modules(
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
