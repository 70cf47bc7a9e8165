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

from loramem.api import health, metrics_router
from loramem.api.admin import router as admin
from loramem.api.dependencies import require_api_key
from loramem.api.errors import install_error_handlers
from loramem.api.generate import router as generate
from loramem.api.memorize import jobs_router
from loramem.api.memorize import router as memorize
from loramem.api.memorize.serving import MemoryService
from loramem.api.middleware import ActivityMiddleware, BodyLimitMiddleware, RequestLog
from loramem.api.openai import router as openai
from loramem.api.protocol import ErrorResponse
from loramem.api.state import AppState
from loramem.core.base_model import BaseModelError, resolve_base_model
from loramem.core.compute_threads import ThreadPerCall
from loramem.core.metrics import Metrics
from loramem.core.registry.db import Database
from loramem.core.registry.migrate import upgrade
from loramem.core.settings import Settings
from loramem.serving.admission import Admission
from loramem.serving.engines import Engine, EngineError, create_engine
from loramem.serving.polling import RegistryChanges
from loramem.serving.stack import ServingStack

log = logging.getLogger("loramem.server")

EngineFactory = Callable[[Settings, Path], Engine]


async def _start_engine(state: AppState, engine_factory: EngineFactory) -> None:
    """Prepares the base model, starts the engine and the serving stack over it; then keeps
    adapters and index in line with the registry."""
    engine: Engine | None = None
    try:
        model_path = await asyncio.to_thread(resolve_base_model, state.settings)
        engine = engine_factory(state.settings, model_path)
        await engine.start()
        serving = await ServingStack.start(
            state.settings, state.db, engine, state.admission, state.metrics
        )
    except Exception as error:
        # Our own errors say what to fix, without paths; others show only their kind.
        ours = isinstance(error, EngineError | BaseModelError)
        state.startup_error = str(error) if ours else type(error).__name__
        log.exception("the server failed to start")
        if engine is not None:
            with contextlib.suppress(Exception):
                await engine.shutdown()
        return
    state.serving = serving
    log.info("ready: engine=%s base_model=%s", engine.kind, state.settings.base_model)
    await serving.watch(state.settings.version_poll_seconds, state.changes)


def create_app(
    settings: Settings | None = None, engine_factory: EngineFactory = create_engine
) -> FastAPI:
    settings = settings or Settings()
    requests = RequestLog()
    metrics_registry = Metrics()
    admission = Admission(settings.max_pending_requests, metrics_registry.refused.inc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Calls off the event loop (query embeddings, model loads) leave no compute pool behind.
        asyncio.get_running_loop().set_default_executor(ThreadPerCall("loop-call"))
        await asyncio.to_thread(upgrade, settings.resolved_database_url)
        db = Database(settings.resolved_database_url)
        state = AppState(
            settings, db, MemoryService(settings, db), requests, metrics_registry, admission
        )
        app.state.loramem = state
        metrics_registry.watch(lambda: metrics_router.read_snapshot(state))
        worker: tuple[threading.Thread, threading.Event] | None = None
        if settings.embedded_worker:
            from loramem.trainer.worker import start_embedded

            state.changes = RegistryChanges(asyncio.get_running_loop())
            worker = start_embedded(
                settings,
                db,
                metrics_registry.training_step.observe,
                state.changes.notify,
                # The HF engine's base weights: the trainer reads them instead of holding a
                # second copy.
                lambda: state.serving.engine.base_model() if state.serving is not None else None,
                # Its first job waits for the engine's weights rather than loading a copy beside
                # them: claims start once the engine has started, or failed to.
                lambda: state.serving is not None or state.startup_error is not None,
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
            if state.serving is not None:
                await state.serving.engine.shutdown()
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
    app.include_router(metrics_router.router)
    user = [Depends(require_api_key)]
    app.include_router(memorize.router, dependencies=user)
    app.include_router(jobs_router.router, dependencies=user)
    app.include_router(generate.router, dependencies=user)
    app.include_router(openai.router, dependencies=user)
    app.include_router(admin.page)
    app.include_router(admin.router)
    app.mount("/static", StaticFiles(directory=admin.STATIC), name="static")
    app.add_middleware(ActivityMiddleware, log=requests, metrics=metrics_registry)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    return app
