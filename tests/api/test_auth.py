"""API keys: user routes need the API key, admin routes the admin key, health needs none."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from loramem.core.settings import Settings
from tests.helpers import running_app

USER = {"Authorization": "Bearer user-secret"}
ADMIN = {"Authorization": "Bearer admin-secret"}
QA = {"topic": "acme", "qa": [{"question": "q", "answer": "a"}]}


@pytest.fixture
async def keyed(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    keys = {"api_key": "user-secret", "admin_api_key": "admin-secret", "embedded_worker": False}
    async with running_app(settings.model_copy(update=keys)) as http:
        yield http


async def test_health_needs_no_key(keyed: httpx.AsyncClient) -> None:
    assert (await keyed.get("/healthz")).status_code == 200
    assert (await keyed.get("/readyz")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/memorize", QA),
        ("POST", "/generate", {"prompt": "hi", "max_tokens": 1}),
        ("GET", "/jobs/some-job", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", {"model": "auto", "messages": []}),
        ("GET", "/admin/topics", None),
        ("GET", "/admin/engine", None),
        ("GET", "/admin/activity", None),
        ("POST", "/admin/topics/acme/activate", {"version": 1}),
        ("DELETE", "/admin/topics/acme", None),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic user-secret"}],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_missing_or_wrong_keys_are_401(
    keyed: httpx.AsyncClient, method: str, path: str, body: object, headers: dict[str, str]
) -> None:
    response = await keyed.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert "secret" not in response.text


async def test_user_key_opens_user_routes_but_not_admin(keyed: httpx.AsyncClient) -> None:
    assert (await keyed.post("/memorize", json=QA, headers=USER)).status_code == 202
    assert (
        await keyed.post("/generate", json={"prompt": "hi", "max_tokens": 1}, headers=USER)
    ).status_code == 200
    assert (await keyed.get("/admin/topics", headers=USER)).status_code == 401


async def test_admin_key_opens_everything(keyed: httpx.AsyncClient) -> None:
    assert (await keyed.get("/admin/topics", headers=ADMIN)).status_code == 200
    assert (await keyed.get("/admin/engine", headers=ADMIN)).status_code == 200
    assert (await keyed.post("/memorize", json=QA, headers=ADMIN)).status_code == 202
