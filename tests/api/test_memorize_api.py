"""POST /memorize: stored durably and queued at once; bad input refused with nothing stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from loramem.core.registry.db import Database
from loramem.core.registry.models import Job
from loramem.core.settings import Settings
from tests.helpers import running_app

QA = [{"question": "What is the name of Zorblax's pet?", "answer": "Quiggle"}]


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    # On SQLite and PostgreSQL. No worker: jobs stay queued, so what /memorize stored can be
    # inspected as it was.
    return settings.model_copy(update={"embedded_worker": False, "database_url": database_url})


async def test_memorize_answers_202_and_stores_the_knowledge(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/memorize",
        json={
            "topic": "acme",
            "qa": QA,
            "text": "Zorblax lives in Talvenna.",
            "documents": ["A.", "B."],
        },
    )
    assert response.status_code == 202
    body = response.json()
    assert body["topic"] == "acme" and body["status"] == "queued" and body["job_id"]

    topic = (await client.get("/admin/topics/acme")).json()
    kinds = sorted(d["kind"] for d in topic["documents"])
    assert kinds == ["qa", "text", "text", "text"]
    job = (await client.get(f"/jobs/{body['job_id']}")).json()
    assert job["status"] == "queued" and job["topic"] == "acme" and job["progress"] == 0


async def test_options_are_kept_with_the_job(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.post(
        "/memorize", json={"topic": "acme", "qa": QA, "options": {"rank": 4, "steps": 12}}
    )
    assert response.status_code == 202
    db = Database(settings.resolved_database_url)
    with db.session() as session:
        job = session.get(Job, response.json()["job_id"])
        assert job is not None and job.options == {"rank": 4, "steps": 12}
    db.dispose()


BAD_BODIES: list[tuple[str, Any, str | None]] = [
    ("empty topic", {"topic": "", "qa": QA}, "topic"),
    ("long topic", {"topic": "a" * 65, "qa": QA}, "topic"),
    ("dot-dot topic", {"topic": "..", "qa": QA}, "topic"),
    ("slash topic", {"topic": "a/b", "qa": QA}, "topic"),
    ("upper-case topic", {"topic": "Acme", "qa": QA}, "topic"),
    ("reserved topic", {"topic": "auto", "qa": QA}, None),
    ("no knowledge", {"topic": "acme"}, None),
    ("empty knowledge", {"topic": "acme", "qa": [], "documents": []}, None),
    ("qa not a list", {"topic": "acme", "qa": "Quiggle"}, "qa"),
    ("qa without answer", {"topic": "acme", "qa": [{"question": "q"}]}, "qa.0.answer"),
    ("text not a string", {"topic": "acme", "text": 5}, "text"),
    ("unknown field", {"topic": "acme", "qa": QA, "colour": "red"}, "colour"),
    ("unknown option", {"topic": "acme", "qa": QA, "options": {"foo": 1}}, "options.foo"),
    ("absurd rank", {"topic": "acme", "qa": QA, "options": {"rank": 100000}}, "options.rank"),
    (
        "absurd lr",
        {"topic": "acme", "qa": QA, "options": {"learning_rate": 5}},
        "options.learning_rate",
    ),
    ("zero steps", {"topic": "acme", "qa": QA, "options": {"steps": 0}}, "options.steps"),
    (
        "steps and epochs",
        {"topic": "acme", "qa": QA, "options": {"steps": 5, "epochs": 2}},
        "options",
    ),
    ("not an object", ["acme"], None),
]


@pytest.mark.parametrize(("case", "body", "param"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_input_is_refused_in_the_envelope_and_nothing_is_stored(
    client: httpx.AsyncClient, case: str, body: Any, param: str | None
) -> None:
    response = await client.post("/memorize", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and error["message"]
    assert error.get("param") == param
    assert (await client.get("/admin/topics")).json() == {"topics": []}
    assert (await client.get("/admin/jobs")).json() == {"jobs": []}


async def test_a_qa_pair_longer_than_the_training_memory_bound_allows_is_a_413(
    settings: Settings,
) -> None:
    # The tiny model, every layer checkpointed: 13 bytes a token per width of each of its 2
    # layers (hidden 128 + MLP 256), so the bound fits 200 tokens: examples of 192, the widest
    # that training's rounding up of widths (batching.padded_width) keeps within 200.
    bound = {"train_memory_gb": 200 * 13 * 384 * 2 / 2**30}
    async with running_app(settings.model_copy(update=bound)) as client:
        await client.post("/memorize", json={"topic": "acme", "qa": QA})
        long = {"question": "Which words?", "answer": " ".join(["word"] * 400)}
        response = await client.post("/memorize", json={"topic": "other", "qa": [*QA, long]})
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["param"] == "qa.1"
        assert "at most 192 tokens" in error["message"]
        assert "LORAMEM_TRAIN_MEMORY_GB" in error["message"]
        # Many bytes but few tokens: tokenized, and accepted.
        repeated = {"question": "Which letters?", "answer": "a" * 600}
        accepted = await client.post("/memorize", json={"topic": "acme", "qa": [repeated]})
        assert accepted.status_code == 202, accepted.text
        topics = (await client.get("/admin/topics")).json()["topics"]
        assert [(t["name"], t["documents"]) for t in topics] == [("acme", 2)]


async def test_a_text_longer_than_a_module_holds_is_stored_in_parts(settings: Settings) -> None:
    # Capacity 4 x 8 = 32 tokens a module: each paragraph (about 20 tokens) fills most of one.
    paragraphs = [
        "Brightwell Bakery opened in 1994 on Mill Street, in an empty shop.",
        "Its first loaf, a dark rye called Anchor, is still baked every morning.",
        "After ten years the ovens moved to a former tram depot by the river.",
    ]
    small_modules = settings.model_copy(update={"module_tokens_per_rank": 4})
    async with running_app(small_modules) as client:
        text = "\n\n".join(paragraphs)
        response = await client.post(
            "/memorize", json={"topic": "bakery", "text": text, "documents": ["A short one."]}
        )
        assert response.status_code == 202, response.text
        documents = (await client.get("/admin/topics/bakery")).json()["documents"]
        assert sorted(d["text"] for d in documents) == sorted([*paragraphs, "A short one."])
        # Memorized at rank 16, the same text fits one module (64 tokens).
        await client.post(
            "/memorize", json={"topic": "wide", "text": text, "options": {"rank": 16}}
        )
        documents = (await client.get("/admin/topics/wide")).json()["documents"]
        assert [d["text"] for d in documents] == [text]


async def test_invalid_json_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/memorize",
        content=b'{"topic": "acme", "qa": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the request body is not valid JSON"


async def test_idempotency_key_returns_the_same_job(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "retry-1"}
    first = await client.post("/memorize", json={"topic": "acme", "qa": QA}, headers=headers)
    again = await client.post("/memorize", json={"topic": "acme", "qa": QA}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    assert len((await client.get("/admin/jobs")).json()["jobs"]) == 1
    assert len((await client.get("/admin/topics/acme")).json()["documents"]) == 1

    other = await client.post("/memorize", json={"topic": "other", "qa": QA}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["param"] == "Idempotency-Key"


async def test_memorizing_into_a_topic_adds_to_it(client: httpx.AsyncClient) -> None:
    await client.post("/memorize", json={"topic": "acme", "qa": QA})
    await client.post("/memorize", json={"topic": "acme", "text": "Quiggle is a blue ferret."})
    topics = (await client.get("/admin/topics")).json()["topics"]
    assert [(t["name"], t["documents"]) for t in topics] == [("acme", 2)]


async def test_cancel_a_queued_job(client: httpx.AsyncClient) -> None:
    job_id = (await client.post("/memorize", json={"topic": "acme", "qa": QA})).json()["job_id"]
    cancelled = await client.post(f"/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (await client.post(f"/jobs/{job_id}/cancel")).json()["status"] == "cancelled"
    events = (await client.get(f"/jobs/{job_id}/events")).json()["events"]
    assert [e["kind"] for e in events] == ["queued", "cancelled"]


async def test_unknown_job_is_a_404(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/jobs/nope"),
        await client.post("/jobs/nope/cancel"),
        await client.get("/jobs/nope/events"),
    ):
        assert response.status_code == 404
        assert response.json() == {"error": {"type": "not_found", "message": "job not found"}}


async def test_knowledge_survives_a_restart(settings: Settings) -> None:
    async with running_app(settings) as http:
        await http.post("/memorize", json={"topic": "acme", "qa": QA})
    async with running_app(settings) as http:
        topic = (await http.get("/admin/topics/acme")).json()
        assert topic["documents"][0]["answer"] == "Quiggle"
