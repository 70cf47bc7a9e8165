"""The app factory and its lifespan, which owns the database, the engine and the embedded worker.

Start-up order: migrations (fast, before serving), then the HTTP server answers at once while the
base model is prepared and the engine starts in the background (`/readyz` says when it is ready;
`/memorize` works from the first moment). The embedded trainer runs as a thread of this process
unless LORAMEM_EMBEDDED_WORKER=false.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from server.activity import ActivityMiddleware, BodyLimitMiddleware, RequestLog
from server.base_model import BaseModelError, resolve_base_model
from server.config import Settings
from server.dependencies import require_api_key
from server.engines import Engine, EngineError, create_engine
from server.errors import install_error_handlers
from server.metrics import Metrics
from server.polling import RegistryChanges
from server.registry.db import Database
from server.registry.migrate import upgrade
from server.retrieval import KnowledgeIndex, create_scorer
from server.retrieval.refresh import IndexRefresher
from server.routers import admin, generate, health, jobs, memorize, metrics, openai_compat
from server.routing import AdapterRouter
from server.schemas import ErrorResponse
from server.services.generation import GenerationService
from server.services.memory import MemoryService
from server.state import AppState

log = logging.getLogger("loramem.server")

EngineFactory = Callable[[Settings, Path], Engine]


async def _start_engine(state: AppState, engine_factory: EngineFactory) -> None:
    """Prepares the base model, starts the engine, loads active adapters, builds the knowledge
    index; then keeps adapters and index in line with the registry."""
    try:
        model_path = await asyncio.to_thread(resolve_base_model, state.settings)
        engine = engine_factory(state.settings, model_path)
        await engine.start()
        state.engine = engine
        router = state.router = AdapterRouter(state.settings, state.db, engine)
        await router.refresh()
        index = KnowledgeIndex(await asyncio.to_thread(create_scorer, state.settings.retrieval))
        refresher = state.index_refresher = IndexRefresher(index, state.db)
        await asyncio.to_thread(refresher.refresh)
    except Exception as error:
        # Our own errors say what to fix, without paths; others show only their kind.
        ours = isinstance(error, EngineError | BaseModelError)
        state.startup_error = str(error) if ours else type(error).__name__
        log.exception("the server failed to start")
        return
    state.generation = GenerationService(state.settings, engine, router, refresher, state.metrics)
    log.info("ready: engine=%s base_model=%s", engine.kind, state.settings.base_model)
    interval = state.settings.version_poll_seconds
    changes = state.changes
    await asyncio.gather(
        router.watch(interval, changes.subscribe() if changes else None),
        refresher.watch(interval, changes.subscribe() if changes else None),
    )


def create_app(
    settings: Settings | None = None, engine_factory: EngineFactory = create_engine
) -> FastAPI:
    settings = settings or Settings()
    requests = RequestLog()
    metrics_registry = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(upgrade, settings.resolved_database_url)
        db = Database(settings.resolved_database_url)
        state = AppState(settings, db, MemoryService(settings, db), requests, metrics_registry)
        app.state.loramem = state
        metrics_registry.watch(lambda: metrics.read_snapshot(state))
        worker: tuple[threading.Thread, threading.Event] | None = None
        if settings.embedded_worker:
            from trainer_worker.worker import start_embedded

            state.changes = RegistryChanges(asyncio.get_running_loop())
            worker = start_embedded(
                settings,
                db,
                metrics_registry.training_step.observe,
                state.changes.notify,
                # The HF engine's base weights, once it has started: the trainer reads them
                # instead of holding a second copy.
                lambda: state.engine.base_model() if state.engine is not None else None,
            )
        state.tasks.append(asyncio.create_task(_start_engine(state, engine_factory)))
        try:
            yield
        finally:
            if worker is not None:
                worker[1].set()
            for task in state.tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.engine is not None:
                await state.engine.shutdown()
            if worker is not None:
                await asyncio.to_thread(worker[0].join, 30)
            db.dispose()

    app = FastAPI(
        title="loramem",
        summary="An inference server whose long-term memory is a set of LoRA adapters.",
        version="0.1.0",
        lifespan=lifespan,
        responses={
            400: {"model": ErrorResponse},
            401: {"model": ErrorResponse},
            404: {"model": ErrorResponse},
            409: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            429: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    user = [Depends(require_api_key)]
    app.include_router(memorize.router, dependencies=user)
    app.include_router(jobs.router, dependencies=user)
    app.include_router(generate.router, dependencies=user)
    app.include_router(openai_compat.router, dependencies=user)
    app.include_router(admin.page)
    app.include_router(admin.router)
    app.mount("/static", StaticFiles(directory=admin.STATIC), name="static")
    app.add_middleware(ActivityMiddleware, log=requests, metrics=metrics_registry)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    return app
