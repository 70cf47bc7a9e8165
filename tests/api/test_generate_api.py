"""POST /generate on the tiny model: base, a topic's adapter, hot swap to a new version, SSE."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from loramem.core.base_model import training_precision
from loramem.core.settings import Settings
from tests.helpers import running_app, wait_active, wait_job

QA = [{"question": "What is the name of Zorblax's pet?", "answer": "Quiggle"}]
MORE_QA = [{"question": "Which city hosts the Vendrell Cup?", "answer": "Talvenna"}]
# Enough for the tiny model to learn two facts (see tests/trainer).
LEARN = {"steps": 40, "learning_rate": 0.01, "dropout": 0.0}


async def _memorize(client: httpx.AsyncClient, topic: str, qa: list[dict[str, str]]) -> dict:
    response = await client.post("/memorize", json={"topic": topic, "qa": qa, "options": LEARN})
    assert response.status_code == 202
    return await wait_job(client, response.json()["job_id"])


async def test_without_topic_the_base_model_answers(client: httpx.AsyncClient) -> None:
    response = await client.post("/generate", json={"prompt": "Hello?", "max_tokens": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["mode"] == "base" and body["adapters"] == [] and body["topic"] is None
    assert body["usage"]["prompt_tokens"] > 0
    assert 0 < body["usage"]["completion_tokens"] <= 5


async def test_unknown_topic_is_a_404_in_every_mode(client: httpx.AsyncClient) -> None:
    for mode in ("auto", "lora", "base"):
        response = await client.post(
            "/generate", json={"prompt": "Hello?", "topic": "nope", "mode": mode}
        )
        assert response.status_code == 404
        assert response.json()["error"] == {
            "type": "not_found",
            "message": "topic not found",
            "param": "topic",
        }


async def test_memorize_then_generate_from_the_new_adapter_then_version_two(
    client: httpx.AsyncClient,
    settings: Settings,
) -> None:
    first = await client.post("/memorize", json={"topic": "acme", "qa": QA, "options": LEARN})
    early = {"prompt": "Zorblax's pet?", "topic": "acme", "max_tokens": 2}
    queued = await client.post("/generate", json={**early, "mode": "lora"})
    if queued.status_code != 200:  # before its first version the topic has no adapter...
        assert queued.status_code == 409 and queued.json()["error"]["type"] == "topic_not_ready"
        # ...but it already answers from its documents, once the index has them (next poll)
        for _ in range(50):
            rag = (await client.post("/generate", json=early)).json()
            if rag["retrieved"] or rag["mode"] != "rag":
                break
            await asyncio.sleep(0.1)
        if rag["mode"] == "rag":
            assert rag["adapters"] == []
            assert rag["retrieved"][0]["text"] == "What is the name of Zorblax's pet? Quiggle"
    job = await wait_job(client, first.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["adapter_version"] == 1 and 1 <= job["step"] <= job["total_steps"] == 40
    assert job["progress"] == 1.0 and job["loss"] is not None and job["recall"] == 1.0

    answer = await client.post("/generate", json={"prompt": QA[0]["question"], "topic": "acme"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["mode"] == "lora" and body["topic"] == "acme" and body["text"].startswith("Quiggle")
    assert body["adapters"] == [{"topic": "acme", "version": 1, "score": 1.0, "module": 0}]

    base = await client.post(
        "/generate", json={"prompt": QA[0]["question"], "topic": "acme", "mode": "base"}
    )
    assert base.json()["mode"] == "base" and base.json()["adapters"] == []
    assert "Quiggle" not in base.json()["text"]

    # Requests keep flowing while version 2 is trained, published and swapped in.
    stop = asyncio.Event()
    statuses: list[int] = []
    versions: set[int] = set()

    async def steady_load() -> None:
        while not stop.is_set():
            reply = await client.post(
                "/generate", json={"prompt": "Tell me.", "topic": "acme", "max_tokens": 3}
            )
            statuses.append(reply.status_code)
            if reply.status_code == 200:
                versions.add(reply.json()["adapters"][0]["version"])

    load = asyncio.create_task(steady_load())
    second = await _memorize(client, "acme", MORE_QA)
    await wait_active(client, "acme", 2)
    await asyncio.sleep(0.3)
    stop.set()
    await load
    assert second["status"] == "succeeded" and second["adapter_version"] == 2
    assert second["recall"] == 1.0
    for fact in QA + MORE_QA:  # version 2 knows the old and the new knowledge
        reply = await client.post("/generate", json={"prompt": fact["question"], "topic": "acme"})
        assert reply.json()["text"].startswith(fact["answer"])
        assert reply.json()["adapters"][0]["version"] == 2
    assert statuses and set(statuses) == {200}
    assert 2 in versions

    topic = (await client.get("/admin/topics/acme")).json()
    assert topic["active_version"] == 2
    assert [v["version"] for v in topic["versions"]] == [1, 2]
    assert len(topic["documents"]) == 2  # version 2 was trained on old and new knowledge
    engine = (await client.get("/admin/engine")).json()
    assert engine["engine"] == "hf" and "acme@v1" not in engine["adapters"]
    assert engine["train_precision"] == training_precision(settings)

    events = (await client.get(f"/jobs/{second['id']}/events")).json()["events"]
    assert [e["kind"] for e in events][:2] == ["queued", "claimed"]
    assert events[-1]["kind"] == "succeeded" and events[-1]["data"]["version"] == 2


async def test_streaming_sends_deltas_then_the_whole_response(client: httpx.AsyncClient) -> None:
    async with client.stream(
        "POST", "/generate", json={"prompt": "Count to three.", "max_tokens": 8, "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    final = chunks[-1]
    assert final["done"] is True and final["mode"] == "base"
    assert "".join(c["text"] for c in chunks[:-1]) == final["text"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": ""}, 422, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, 422, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, 422, "temperature"),
        ({"prompt": "x", "mode": "telepathy"}, 422, "mode"),
        ({"prompt": "x", "topic": "Bad Topic"}, 422, "topic"),
        ({"prompt": "x", "mode": "lora"}, 400, "topic"),
        ({"prompt": "x", "mode": "rag"}, 400, "topic"),
        ({"prompt": "x", "mode": "hybrid"}, 400, "topic"),
        ({"prompt": 5}, 422, "prompt"),
    ],
)
async def test_bad_generate_requests(
    client: httpx.AsyncClient, body: dict, status: int, param: str
) -> None:
    response = await client.post("/generate", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


async def test_a_failed_training_leaves_the_previous_version_serving(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(settings.model_copy(update={"max_job_attempts": 1})) as client:
        assert (await _memorize(client, "acme", QA))["status"] == "succeeded"
        await wait_active(client, "acme", 1)

        def explode(*args: object, **kwargs: object) -> None:
            raise RuntimeError("out of memory while reading /srv/secret/weights.bin")

        monkeypatch.setattr("loramem.trainer.pipeline.train_lora", explode)
        failed = await _memorize(client, "acme", MORE_QA)
        assert failed["status"] == "failed" and failed["adapter_version"] is None
        assert failed["error"] == "RuntimeError: out of memory while reading <path>"
        answer = await client.post("/generate", json={"prompt": "Hi", "topic": "acme"})
        assert answer.json()["adapters"][0]["version"] == 1


async def test_a_prompt_longer_than_the_model_takes_is_a_400(client: httpx.AsyncClient) -> None:
    # The tiny model takes 1024 positions; this prompt is about 2000 tokens.
    response = await client.post("/generate", json={"prompt": "lorem ipsum " * 1000})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"
    assert (
        await client.post("/generate", json={"prompt": "hi", "max_tokens": 2})
    ).status_code == 200


async def test_a_client_that_goes_away_stops_using_the_engine(settings: Settings) -> None:
    settings = settings.model_copy(update={"max_new_tokens": 1000})
    async with running_app(settings) as http:
        app = http._transport.app  # type: ignore[attr-defined]
        body = json.dumps({"prompt": "Tell me a long story.", "max_tokens": 1000}).encode()
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])
        sent: list[dict] = []

        hang_up_at = time.monotonic() + 0.3

        async def receive() -> dict:  # like a server's: the disconnect is there once it happened
            message = next(messages, None)
            if message is not None:
                return message
            while time.monotonic() < hang_up_at:
                await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "path": "/generate",
            "raw_path": b"/generate",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
            "server": ("loramem.test", 80),
            "client": ("127.0.0.1", 1234),
            "scheme": "http",
        }
        await app(scope, receive, send)
        assert sent[0]["status"] == 499
        for _ in range(100):  # the engine notices at its next decoding step
            stats = (await http.get("/admin/engine")).json()["stats"]
            if stats["aborted"]:
                break
            await asyncio.sleep(0.05)
        assert stats["aborted"] == 1 and stats["requests"] == 1


async def test_a_version_the_embedded_worker_publishes_is_served_before_the_next_poll(
    settings: Settings,
) -> None:
    # Polled once a minute: only the worker's own signal can make the server notice in time.
    async with running_app(settings.model_copy(update={"version_poll_seconds": 60.0})) as client:
        job = await _memorize(client, "acme", QA)
        assert job["status"] == "succeeded"
        published = time.monotonic()
        await wait_active(client, "acme", 1)
        assert time.monotonic() - published < 10
        answer = await client.post("/generate", json={"prompt": QA[0]["question"], "topic": "acme"})
        assert answer.json()["text"].startswith("Quiggle")
