"""`topic: "auto"` and the modes rag and hybrid, over HTTP on the tiny model."""

from __future__ import annotations

import httpx
import pytest

from loramem.core.settings import Settings
from tests.helpers import running_app, wait_active, wait_job

LEARN = {"steps": 40, "learning_rate": 0.01, "dropout": 0.0}
TOPICS = {
    "zorblax": [{"question": "What is the name of Zorblax's pet?", "answer": "Quiggle"}],
    "vendrell": [{"question": "Which city hosts the Vendrell Cup?", "answer": "Talvenna"}],
}


@pytest.fixture(params=["minilm", "bm25"])
async def two_topics(settings: Settings, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    async with running_app(settings.model_copy(update={"retrieval": request.param})) as client:
        for topic, qa in TOPICS.items():
            queued = await client.post(
                "/memorize", json={"topic": topic, "qa": qa, "options": LEARN}
            )
            assert (await wait_job(client, queued.json()["job_id"]))["status"] == "succeeded"
            await wait_active(client, topic, 1)
        yield client


async def test_auto_routes_each_question_to_its_topic(two_topics: httpx.AsyncClient) -> None:
    for topic, qa in TOPICS.items():
        # Other words than the memorized question; routing reads content, not names.
        question = {"zorblax": "Zorblax has a pet: what is it called?"}.get(
            topic, "In which city is the Vendrell Cup held?"
        )
        body = (
            await two_topics.post("/generate", json={"prompt": question, "topic": "auto"})
        ).json()
        assert body["topic"] == topic and body["mode"] == "lora", body
        [adapter] = body["adapters"]
        assert adapter["topic"] == topic and adapter["version"] == 1 and 0 < adapter["score"] < 1
        exact = {"prompt": qa[0]["question"], "topic": "auto", "max_tokens": 8}
        assert (
            (await two_topics.post("/generate", json=exact))
            .json()["text"]
            .startswith(qa[0]["answer"])
        )


async def test_auto_falls_back_to_the_base_model_when_nothing_matches(
    two_topics: httpx.AsyncClient,
) -> None:
    body = (
        await two_topics.post(
            "/generate", json={"prompt": "How do volcanoes form?", "topic": "auto", "max_tokens": 4}
        )
    ).json()
    assert body["topic"] is None and body["mode"] == "base" and body["adapters"] == []


async def test_rag_and_hybrid_put_the_topics_passages_into_the_prompt(
    two_topics: httpx.AsyncClient,
) -> None:
    question = {"prompt": "What is Zorblax's pet called?", "topic": "zorblax", "max_tokens": 4}
    lora = (await two_topics.post("/generate", json={**question, "mode": "lora"})).json()
    rag = (await two_topics.post("/generate", json={**question, "mode": "rag"})).json()
    hybrid = (await two_topics.post("/generate", json={**question, "mode": "hybrid"})).json()
    assert lora["mode"] == "lora" and lora["retrieved"] == []
    assert rag["mode"] == "rag" and rag["adapters"] == []
    assert hybrid["mode"] == "hybrid" and hybrid["adapters"][0]["topic"] == "zorblax"
    for body in (rag, hybrid):
        # Only this topic's passages, never the other topic's.
        assert [r["text"] for r in body["retrieved"]] == [
            "What is the name of Zorblax's pet? Quiggle"
        ]
        assert body["usage"]["prompt_tokens"] > lora["usage"]["prompt_tokens"]


async def test_a_forgotten_topic_is_no_longer_routed_to(two_topics: httpx.AsyncClient) -> None:
    assert (await two_topics.delete("/admin/topics/zorblax")).status_code == 200
    question = {"prompt": "What is the name of Zorblax's pet?", "topic": "auto", "max_tokens": 4}
    # The server that forgot applies it at once (others within one registry poll).
    body = (await two_topics.post("/generate", json=question)).json()
    assert body["topic"] != "zorblax" and "Quiggle" not in body["text"]
