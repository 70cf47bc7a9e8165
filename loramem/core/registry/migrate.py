"""Applies the Alembic migrations; `loramem db upgrade` and every process start call it.

Many processes may start at once against one PostgreSQL (servers and workers of a scale-out
deployment): a transaction-scoped advisory lock lets one migrate while the others wait, then find
nothing left to do.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from loramem.core.registry.db import create_db_engine

MIGRATIONS_DIR = Path(migrations.__file__).parent
# An arbitrary constant naming loramem's migration lock among PostgreSQL advisory locks.
MIGRATION_LOCK_ID = 0x6C6F72616D656D


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    config = alembic_config(url)
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()
