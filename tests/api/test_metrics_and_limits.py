"""Prometheus metrics, body-size limit (413) and overload (429) on the tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from loramem.core.settings import Settings
from tests.helpers import running_app, wait_job


async def test_metrics_cover_requests_generation_engine_and_jobs(client: httpx.AsyncClient) -> None:
    job = await client.post(
        "/memorize",
        json={"topic": "acme", "qa": [{"question": "q", "answer": "a"}], "options": {"steps": 3}},
    )
    await wait_job(client, job.json()["job_id"])
    assert (
        await client.post("/generate", json={"prompt": "hi", "max_tokens": 3})
    ).status_code == 200
    assert (await client.get("/jobs/nope")).status_code == 404
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in (
        'loramem_requests_total{method="POST",route="/generate",status="200"} 1.0',
        'loramem_requests_total{method="GET",route="/jobs/{job_id}",status="404"} 1.0',
        'loramem_jobs{state="succeeded"} 1.0',
        "loramem_time_to_first_token_seconds_count 1.0",
        "loramem_engine_queue_depth 0.0",
        "loramem_training_step_seconds_count 3.0",
    ):
        assert line in text, line
    assert "loramem_generated_tokens_total 3.0" in text
    assert "loramem_engine_adapter_loads_total" in text


async def test_metrics_need_the_key_unless_public(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_key": "k", "embedded_worker": False})
    async with running_app(keyed) as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (
            await http.get("/metrics", headers={"Authorization": "Bearer k"})
        ).status_code == 200
    public = keyed.model_copy(update={"metrics_public": True})
    async with running_app(public) as http:
        assert (await http.get("/metrics")).status_code == 200


async def test_bodies_over_the_limit_are_413(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_body_bytes": 2048, "embedded_worker": False})
    async with running_app(limited) as http:
        big = {"topic": "acme", "text": "x" * 4000}
        declared = await http.post("/memorize", json=big)
        assert declared.status_code == 413
        assert declared.json()["error"]["type"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"topic": "acme", "text": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        streamed = await http.post(
            "/memorize", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert (await http.get("/admin/topics")).json() == {"topics": []}


async def test_overload_is_refused_with_429_then_recovers(settings: Settings) -> None:
    tight = settings.model_copy(
        update={"max_pending_requests": 2, "max_batch_size": 2, "embedded_worker": False}
    )
    async with running_app(tight) as http:
        replies = await asyncio.gather(
            *(
                http.post("/generate", json={"prompt": f"story {n}", "max_tokens": 200})
                for n in range(8)
            )
        )
        statuses = [r.status_code for r in replies]
        assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}
        refused = next(r for r in replies if r.status_code == 429)
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "overloaded"
        again = await http.post("/generate", json={"prompt": "hi", "max_tokens": 2})
        assert again.status_code == 200  # once the burst is over
        metrics = (await http.get("/metrics")).text
        assert f"loramem_refused_requests_total {statuses.count(429)}.0" in metrics
