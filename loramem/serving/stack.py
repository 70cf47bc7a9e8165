"""Everything that serves generation, assembled once the engine has started: the table of loaded
adapters, the knowledge index, routing, the planner and the generation service; and the polls that
keep adapters and index in line with the registry."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from loramem.core.metrics import Metrics
from loramem.core.registry.db import Database
from loramem.core.settings import Settings
from loramem.serving.adapters import AdapterTable
from loramem.serving.admission import Admission
from loramem.serving.engines import Engine
from loramem.serving.generation import GenerationService
from loramem.serving.planner import Planner
from loramem.serving.polling import RegistryChanges
from loramem.serving.retrieval import KnowledgeIndex, create_scorer
from loramem.serving.retrieval.refresh import IndexRefresher
from loramem.serving.routing import ContentRouter


@dataclass
class ServingStack:
    engine: Engine
    adapters: AdapterTable
    index: IndexRefresher
    generation: GenerationService

    @classmethod
    async def start(
        cls,
        settings: Settings,
        db: Database,
        engine: Engine,
        admission: Admission,
        metrics: Metrics,
    ) -> ServingStack:
        """Loads the active adapters and builds the knowledge index (the engine has started)."""
        adapters = AdapterTable(settings, db, engine)
        await adapters.refresh()
        index = KnowledgeIndex(await asyncio.to_thread(create_scorer, settings.retrieval))
        refresher = IndexRefresher(index, db)
        await asyncio.to_thread(refresher.refresh)
        planner = Planner(
            settings, engine, adapters, ContentRouter(refresher, settings.route_min_score)
        )
        return cls(
            engine, adapters, refresher, GenerationService(engine, planner, admission, metrics)
        )

    async def refresh(self) -> None:
        """Brings adapters and index in line with the registry now."""
        await self.adapters.refresh()
        await asyncio.to_thread(self.index.refresh)

    async def watch(self, interval: float, changes: RegistryChanges | None = None) -> None:
        """Polls the registry forever; a change this process made wakes the polls at once."""
        await asyncio.gather(
            self.adapters.watch(interval, changes.subscribe() if changes else None),
            self.index.watch(interval, changes.subscribe() if changes else None),
        )
