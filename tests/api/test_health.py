"""Health and readiness, including a server whose engine cannot start."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
from asgi_lifespan import LifespanManager

from loramem.api.app import create_app
from loramem.core.settings import Settings


async def test_ready_server(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_a_base_model_that_cannot_load_is_reported_not_hidden(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"base_model": str(tmp_path / "no-such-model")})
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            with anyio.fail_after(30):
                while "startup failed" not in (ready := await http.get("/readyz")).text:
                    await anyio.sleep(0.05)
            assert ready.status_code == 503
            message = ready.json()["error"]["message"]
            assert message.startswith("startup failed: LORAMEM_BASE_MODEL must be")
            assert str(tmp_path) not in message
            assert (await http.get("/healthz")).status_code == 200
            generate = await http.post("/generate", json={"prompt": "hi"})
            assert generate.status_code == 503
