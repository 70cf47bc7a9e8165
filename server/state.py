"""What the app holds while it runs: settings, database, engine and the services over them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from server.activity import RequestLog
from server.config import Settings
from server.engines import Engine
from server.metrics import Metrics
from server.polling import RegistryChanges
from server.registry.db import Database
from server.retrieval.refresh import IndexRefresher
from server.routing import AdapterRouter
from server.services.generation import GenerationService
from server.services.memory import MemoryService


@dataclass
class AppState:
    settings: Settings
    db: Database
    memory: MemoryService
    requests: RequestLog
    metrics: Metrics
    engine: Engine | None = None
    router: AdapterRouter | None = None
    index_refresher: IndexRefresher | None = None
    generation: GenerationService | None = None
    startup_error: str | None = None
    # Set when an embedded worker runs: its publishes wake the pollers at once.
    changes: RegistryChanges | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
