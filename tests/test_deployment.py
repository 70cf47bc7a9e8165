"""docker-compose.yml describes the scale-out deployment, and docker compose accepts it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"LORAMEM_API_KEY": "user-key", "LORAMEM_ADMIN_API_KEY": "admin-key"}


def _find_compose() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def _compose_command() -> list[str]:
    """docker compose, or Debian's docker-compose installed when neither is there: `config`
    validates the file without a Docker engine."""
    command = _find_compose()
    if command is None and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "docker-compose"], check=False, timeout=900
        )
        command = _find_compose()
    if command is None:
        pytest.fail("validating docker-compose.yml needs docker-compose (Debian's package)")
    return command


def _mount(volume: str | dict[str, str]) -> tuple[str, str]:
    """Compose v1 prints volumes as "source:target:mode", v2 as mappings."""
    if isinstance(volume, str):
        source, target, *_ = volume.split(":")
        return source, target
    return volume["source"], volume["target"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    command = _compose_command()
    result = subprocess.run(
        [*command, "config"],
        cwd=ROOT,
        env={**os.environ, **KEYS},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_refuses_to_start_without_keys() -> None:
    command = _compose_command()
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    result = subprocess.run(
        [*command, "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "LORAMEM_API_KEY" in result.stderr


def test_services_and_what_they_share(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "server", "worker"}
    server, worker = services["server"], services["worker"]
    for service in (server, worker, services["migrate"]):
        url = service["environment"]["LORAMEM_DATABASE_URL"]
        assert url.startswith("postgresql://") and "@postgres:5432/" in url
    for service in (server, worker):
        assert service["environment"]["LORAMEM_ADAPTER_DIR"].startswith("/store/")
        assert ("store", "/store") in [_mount(v) for v in service["volumes"]]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert server["environment"]["LORAMEM_EMBEDDED_WORKER"] == "false"
    assert worker["command"] == ["loramem", "worker"] and worker["deploy"]["replicas"] >= 2
    assert services["migrate"]["command"] == ["loramem", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"] and "readyz" in str(server["healthcheck"])
    for service in (server, worker):
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1
    assert worker["environment"]["LORAMEM_DEVICE"] == "cuda"
    assert (
        worker["environment"]["LORAMEM_DATABASE_URL"]
        == server["environment"]["LORAMEM_DATABASE_URL"]
    )
