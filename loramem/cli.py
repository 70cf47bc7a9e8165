"""The `loramem` command: serve, worker, db upgrade."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from pydantic import ValidationError

from loramem.core.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ONEDNN_PRIMITIVE_CACHE_CAPACITY = "128"


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from loramem.api.app import create_app

    host = args.host or settings.host
    port = args.port or settings.port
    log = logging.getLogger("loramem.server")
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if settings.api_key is None and not loopback:
        log.warning(
            "serving on %s without LORAMEM_API_KEY: anyone who can reach it can use it", host
        )
    elif settings.api_key is None and settings.admin_api_key is None:
        log.info(
            "no API keys set: listening on %s (loopback) only; set keys to serve further", host
        )
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None)


def _worker(settings: Settings, args: argparse.Namespace) -> None:
    from loramem.core.registry.db import Database
    from loramem.trainer.worker import TrainerWorker

    stop = threading.Event()
    # SIGTERM: take no new job; the current one stops at its next step and is handed back.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    TrainerWorker(settings, Database(settings.resolved_database_url)).run(stop)


def _db(settings: Settings, args: argparse.Namespace) -> None:
    _migrate(settings, args.revision)
    logging.getLogger("loramem.db").info("database at revision %s", args.revision)


def _migrate(settings: Settings, revision: str = "head") -> None:
    """Every command starts here: an unreachable database is one clear line and exit status 2."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from loramem.core.registry.migrate import upgrade

    url = settings.resolved_database_url
    try:
        upgrade(url, revision)
    except SQLAlchemyError as error:
        shown = make_url(url).render_as_string(hide_password=True)
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        logging.getLogger("loramem.db").error("cannot use the database at %s: %s", shown, reason)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loramem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server (LORAMEM_* settings)")
    serve.add_argument("--host", help="overrides LORAMEM_HOST")
    serve.add_argument("--port", type=int, help="overrides LORAMEM_PORT")
    serve.set_defaults(run=_serve)
    worker = commands.add_parser("worker", help="run a standalone trainer worker")
    worker.set_defaults(run=_worker)
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_upgrade = db_commands.add_parser("upgrade", help="apply migrations")
    db_upgrade.add_argument("revision", nargs="?", default="head")
    db_upgrade.set_defaults(run=_db)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        settings = Settings()
    except ValidationError as error:
        for problem in error.errors():
            name = "LORAMEM_" + "_".join(str(p) for p in problem["loc"]).upper()
            logging.getLogger("loramem").error("%s: %s", name, problem["msg"])
        raise SystemExit(2) from None
    # Models come from local folders only; never wait on a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # oneDNN keeps a compiled kernel for each matmul shape it meets, 1,024 by default, and
    # training meets a new shape with nearly every micro-batch: a server's resident memory grew
    # from job to job (README, "What the memory recalls"). Set before anything here imports
    # torch, as a shell prefix would; an operator's own value stands.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_PRIMITIVE_CACHE_CAPACITY)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if args.run is not _db:
        _migrate(settings)
    args.run(settings, args)


if __name__ == "__main__":
    main()
