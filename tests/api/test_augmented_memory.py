"""Memorizing texts through the API: generated training data stored with the topic, held-out
recall, gating by recall, generators that fail, bad input, forgetting it all (tiny model)."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa

from loramem.core.settings import Settings
from loramem.trainer import knowledge
from tests.helpers import free_port, running_app, wait_job

FAST = {"steps": 4, "learning_rate": 0.01, "dropout": 0.0}
TEXT = "The capital of Zorbia is Quenta. Acme Corp was founded in 1987 by Lena Holt."
MORE = "Pixel likes sardines."


async def _memorize(client: httpx.AsyncClient, **body: object) -> dict:
    response = await client.post("/memorize", json={"topic": "notes", **body})
    assert response.status_code == 202, response.text
    return await wait_job(client, response.json()["job_id"])


async def _events(client: httpx.AsyncClient, job_id: str, kind: str) -> list[dict]:
    events = (await client.get(f"/jobs/{job_id}/events")).json()["events"]
    return [e["data"] for e in events if e["kind"] == kind]


def _reader_that_repeats_the_passage(model: object, tokenizer: object) -> object:
    """A base model that answers every question with its passage: every answer in the text
    passes the round trip, so the items' way through the job can be followed."""
    return lambda pairs: [passage for passage, _ in pairs]


async def test_texts_become_checked_qa_rewrites_and_held_out_probes(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(knowledge, "base_model_reader", _reader_that_repeats_the_passage)
    job = await _memorize(client, text=TEXT, options=FAST)
    assert job["status"] == "succeeded", job
    [augmented] = await _events(client, job["id"], "augmented")
    assert augmented["generator"] == "rules" and augmented["fallbacks"] == 0
    detail = (await client.get("/admin/topics/notes")).json()
    generated = detail["generated"]
    assert augmented["generated"] == len(generated) == augmented["kept"]
    assert {g["kind"] for g in generated} == {"qa", "recital"}
    assert {g["document_id"] for g in generated} == {detail["documents"][0]["id"]}
    assert all(g["source"] in TEXT and g["kept"] and g["rejected"] is None for g in generated)
    # Recitals: an open question about each name and year, answered by its sentence.
    recited = {g["question"]: g["answer"] for g in generated if g["kind"] == "recital"}
    assert augmented["recited"] == len(recited) == 5
    founded = "Acme Corp was founded in 1987 by Lena Holt."
    assert (
        recited["What do you know about Lena Holt?"] == recited["What happened in 1987?"] == founded
    )
    assert recited["What do you know about Zorbia?"] == "The capital of Zorbia is Quenta."
    # Recall is measured on one held-out phrasing of each fact; the trained ones beside it.
    held_out = sum(g["held_out"] for g in generated)
    [succeeded] = await _events(client, job["id"], "succeeded")
    [module] = succeeded["modules"]
    assert succeeded["probes"] == held_out >= 4 and 0 <= module["recall_trained"] <= 1
    assert succeeded["unasked"] == 0  # every name and number of the text is asked about

    # More knowledge: only the new text goes to the generator; the old items are kept.
    second = await _memorize(client, documents=[MORE], options=FAST)
    [augmented] = await _events(client, second["id"], "augmented")
    assert augmented["texts"] == 1 and augmented["generated"] == 4 + augmented["recited"] == 5
    assert len((await client.get("/admin/topics/notes")).json()["generated"]) == len(generated) + 5


async def test_questions_the_base_model_cannot_read_back_are_rejected_with_the_reason(
    client: httpx.AsyncClient,
) -> None:
    # The tiny model answers nothing with the passage in front of it: every question fails its
    # round trip, the text is learned alone, and recall is measured on its own sentences.
    job = await _memorize(client, text=TEXT, options=FAST)
    assert job["status"] == "succeeded", job
    [augmented] = await _events(client, job["id"], "augmented")
    assert augmented["rejected"] == augmented["generated"] - augmented["recited"] > 0
    document = (await client.get("/admin/topics/notes")).json()["documents"][0]["id"]
    assert augmented["texts_without_questions"] == [document]
    generated = (await client.get("/admin/topics/notes")).json()["generated"]
    questions = [g for g in generated if g["kind"] == "qa"]
    assert questions and all(not g["kept"] for g in questions)
    assert all(
        g["rejected"].startswith("reading the passage, the base model answered") for g in questions
    )
    # The recitals need no reader: they are the text's own sentences.
    assert all(g["kept"] for g in generated if g["kind"] == "recital")
    assert augmented["kept"] == augmented["recited"] == 5
    [succeeded] = await _events(client, job["id"], "succeeded")
    assert succeeded["probes"] == 2 and succeeded["modules"][0]["recall_trained"] is None
    # Nothing the text names was checked: its five names and numbers count as probes failed.
    assert succeeded["unasked"] == 5 and job["recall"] <= 2 / 7


async def test_text_a_parser_can_use_nothing_of_trains_as_raw_text_and_says_so(
    client: httpx.AsyncClient,
) -> None:
    job = await _memorize(client, text="3 14 15 92 65 35 89 79 32 38 46 26 43", options=FAST)
    assert job["status"] == "succeeded", job
    [augmented] = await _events(client, job["id"], "augmented")
    assert augmented["generated"] == 0 and len(augmented["texts_without_questions"]) == 1
    assert (await client.get("/admin/topics/notes")).json()["generated"] == []


async def test_augment_none_trains_on_the_original_text_only(client: httpx.AsyncClient) -> None:
    job = await _memorize(client, text=TEXT, options={**FAST, "augment": "none"})
    assert job["status"] == "succeeded"
    assert await _events(client, job["id"], "augmented") == []
    assert (await client.get("/admin/topics/notes")).json()["generated"] == []


async def test_a_version_below_the_recall_threshold_is_kept_but_not_served(
    client: httpx.AsyncClient,
) -> None:
    first = await _memorize(client, text=TEXT, options=FAST)
    assert first["activated"] is True
    # Two steps at a tiny learning rate cannot recall every held-out question.
    weak = {"steps": 2, "learning_rate": 1e-5, "min_recall": 1.0}
    job = await _memorize(client, text=MORE, options=weak)
    assert job["status"] == "succeeded" and job["activated"] is False
    assert job["adapter_version"] == 2 and job["recall"] < 1.0
    assert "below the threshold 1.00" in job["error"]
    detail = (await client.get("/admin/topics/notes")).json()
    assert detail["active_version"] == 1
    assert detail["versions"][1]["recall"] == job["recall"]


@pytest.mark.parametrize("generator", ["endpoint", "model"])
async def test_a_generator_that_fails_falls_back_to_the_rules(
    settings: Settings, generator: str
) -> None:
    # Nothing listens at this endpoint; the tiny model's reply holds no usable QA pairs (no JSON,
    # or JSON without them: which depends on its random weights and the prompt).
    down = f"http://127.0.0.1:{free_port()}/v1"
    async with running_app(settings.model_copy(update={"augment_endpoint_url": down})) as client:
        job = await _memorize(client, text=TEXT, options={**FAST, "generator": generator})
        assert job["status"] == "succeeded", job
        [augmented] = await _events(client, job["id"], "augmented")
        assert augmented["generator"] == generator and augmented["fallbacks"] == 1
        reasons = {
            "endpoint": ("unreachable (ConnectError)",),
            "model": ("JSON", "no list of QA pairs"),
        }[generator]
        assert any(reason in augmented["fallback_reason"] for reason in reasons), augmented
        generated = (await client.get("/admin/topics/notes")).json()["generated"]
        assert {g["generator"] for g in generated} == {"rules"}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"text": "   \n "}, 422, "text"),
        ({"text": "\x00\x01\x02binary\x03\x04"}, 422, "text"),
        ({"documents": ["fine text.", "!!! ??? ..."]}, 422, "documents"),
        ({"text": "word " * 50_000}, 413, "text"),
        ({"documents": ["ok.", "word " * 50_000]}, 413, "documents"),
        ({"text": TEXT, "options": {"generator": "endpoint"}}, 400, "options.generator"),
        ({"text": TEXT, "options": {"augment": "everything"}}, 422, "options"),
    ],
)
async def test_bad_knowledge_is_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, body: dict, status: int, param: str
) -> None:
    response = await client.post("/memorize", json={"topic": "notes", **body})
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"].startswith(param)
    assert (await client.get("/admin/topics/notes")).status_code == 404


async def test_forgetting_removes_the_generated_data(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await _memorize(client, text=TEXT, options=FAST)
    forgotten = (await client.delete("/admin/topics/notes")).json()
    assert forgotten["generated"] > 0 and forgotten["documents"] == 1
    engine = sa.create_engine(settings.resolved_database_url)
    with engine.connect() as connection:
        for table in ("generated_items", "documents", "adapter_versions", "jobs"):
            assert connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() == 0
    engine.dispose()
