"""The `loramem` command: migrations, and clear failures instead of tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from loramem.cli import main
from tests.helpers import process_env


def _loramem(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loramem.cli", *args],
        env=process_env(**settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_db_upgrade_creates_the_registry(tmp_path: Path) -> None:
    result = _loramem("db", "upgrade", data_dir=str(tmp_path))
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'loramem.db'}")
    tables = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert {"topics", "documents", "adapter_versions", "jobs", "job_events"} <= tables


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["db", "upgrade"]])
def test_an_unreachable_database_is_one_clear_line_and_exit_2(command: list[str]) -> None:
    result = _loramem(*command, database_url="postgresql://loramem:hunter2@127.0.0.1:1/registry")
    assert result.returncode == 2
    assert (
        "cannot use the database at postgresql+psycopg://loramem:***@127.0.0.1:1" in result.stderr
    )
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


def test_a_bad_setting_names_the_variable(tmp_path: Path) -> None:
    result = _loramem("serve", port="eighty", data_dir=str(tmp_path))
    assert result.returncode == 2
    assert "LORAMEM_PORT" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("operators", "expected"), [(None, "128"), ("512", "512")])
def test_the_command_bounds_onednns_kernel_cache_unless_the_operator_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operators: str | None, expected: str
) -> None:
    monkeypatch.setenv("LORAMEM_DATA_DIR", str(tmp_path))
    # Set first, so that the test's end restores the variable whatever `main` does with it.
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", operators or "")
    if operators is None:
        monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    main(["db", "upgrade"])
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == expected
