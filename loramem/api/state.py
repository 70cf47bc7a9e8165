"""What the app holds while it runs: settings, database, admission, and the serving stack once
the engine has started."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from loramem.api.memorize.serving import MemoryService
from loramem.api.middleware import RequestLog
from loramem.core.metrics import Metrics
from loramem.core.registry.db import Database
from loramem.core.settings import Settings
from loramem.serving.admission import Admission
from loramem.serving.polling import RegistryChanges
from loramem.serving.stack import ServingStack


@dataclass
class AppState:
    settings: Settings
    db: Database
    memory: MemoryService
    requests: RequestLog
    metrics: Metrics
    admission: Admission
    serving: ServingStack | None = None
    startup_error: str | None = None
    # Set when an embedded worker runs: its publishes wake the pollers at once.
    changes: RegistryChanges | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
