"""Admin JSON API: roll back to an older version, forget a topic."""

from __future__ import annotations

import httpx

from loramem.core.settings import Settings
from tests.helpers import wait_active, wait_job

QA = [{"question": "What is the name of Zorblax's pet?", "answer": "Quiggle"}]


async def _version(client: httpx.AsyncClient) -> int:
    job = await client.post("/memorize", json={"topic": "acme", "qa": QA, "options": {"steps": 2}})
    done = await wait_job(client, job.json()["job_id"])
    assert done["status"] == "succeeded"
    await wait_active(client, "acme", done["adapter_version"])
    return int(done["adapter_version"])


async def _served_version(client: httpx.AsyncClient) -> int:
    reply = await client.post("/generate", json={"prompt": "hi", "topic": "acme", "max_tokens": 1})
    return int(reply.json()["adapters"][0]["version"])


async def test_rollback_serves_the_older_version_at_once(client: httpx.AsyncClient) -> None:
    assert [await _version(client), await _version(client)] == [1, 2]
    assert await _served_version(client) == 2
    rolled = await client.post("/admin/topics/acme/activate", json={"version": 1})
    assert rolled.status_code == 200 and rolled.json()["active_version"] == 1
    assert [v["active"] for v in rolled.json()["versions"]] == [True, False]
    assert await _served_version(client) == 1

    missing = await client.post("/admin/topics/acme/activate", json={"version": 7})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "version"
    unknown = await client.post("/admin/topics/nope/activate", json={"version": 1})
    assert unknown.status_code == 404
    bad = await client.post("/admin/topics/acme/activate", json={"version": "latest"})
    assert bad.status_code == 422


async def test_forget_removes_everything_of_a_topic(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await _version(client)
    topic_dirs = list(settings.resolved_adapter_dir.glob("[!.]*"))
    assert len(topic_dirs) == 1 and any(topic_dirs[0].iterdir())
    forgotten = await client.delete("/admin/topics/acme")
    assert forgotten.json() == {"topic": "acme", "versions": 1, "documents": 1, "generated": 0}
    assert not topic_dirs[0].exists()
    assert (await client.get("/admin/topics")).json() == {"topics": []}
    assert (await client.get("/admin/jobs")).json() == {"jobs": []}
    assert "acme@v1" not in (await client.get("/admin/engine")).json()["adapters"]
    gone = await client.post("/generate", json={"prompt": "hi", "topic": "acme"})
    assert gone.status_code == 404
    assert (await client.delete("/admin/topics/acme")).status_code == 404
    # The name can be used again, from nothing.
    assert await _version(client) == 1
