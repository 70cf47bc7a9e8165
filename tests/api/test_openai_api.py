"""The OpenAI-compatible API, driven by the official `openai` client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from loramem.core.settings import Settings
from tests.helpers import running_app, wait_active, wait_job

QA = [{"question": "What is the name of Zorblax's pet?", "answer": "Quiggle"}]
LEARN = {"steps": 40, "learning_rate": 0.01, "dropout": 0.0}


@pytest.fixture
async def memorized(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, openai.AsyncOpenAI]]:
    async with running_app(settings) as http:
        job = await http.post("/memorize", json={"topic": "acme", "qa": QA, "options": LEARN})
        assert (await wait_job(http, job.json()["job_id"]))["status"] == "succeeded"
        await wait_active(http, "acme", 1)
        client = openai.AsyncOpenAI(
            api_key="unused", base_url="http://loramem.test/v1", http_client=http, max_retries=0
        )
        yield http, client


async def test_models_lists_base_topics_and_auto(memorized) -> None:  # type: ignore[no-untyped-def]
    _, client = memorized
    ids = [model.id async for model in client.models.list()]
    assert ids[1:] == ["acme", "auto"] and ids[0].startswith("tiny-llama")


async def test_chat_from_a_topic_and_from_the_base_model(memorized) -> None:  # type: ignore[no-untyped-def]
    _, client = memorized
    question = [{"role": "user", "content": QA[0]["question"]}]
    reply = await client.chat.completions.create(model="acme", messages=question, temperature=0)
    assert reply.choices[0].message.content.startswith("Quiggle")
    assert (
        reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens > 0
    )
    base_id = (await client.models.list()).data[0].id
    base = await client.chat.completions.create(
        model=base_id, messages=question, temperature=0, max_tokens=8
    )
    assert "Quiggle" not in base.choices[0].message.content


async def test_chat_streams_in_openai_chunks(memorized) -> None:  # type: ignore[no-untyped-def]
    _, client = memorized
    stream = await client.chat.completions.create(
        model="acme",
        messages=[{"role": "user", "content": QA[0]["question"]}],
        temperature=0,
        max_tokens=6,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.startswith("Quiggle") and chunks[-1].choices[0].finish_reason in ("stop", "length")


async def test_completions_whole_and_streamed(memorized) -> None:  # type: ignore[no-untyped-def]
    _, client = memorized
    whole = await client.completions.create(
        model="acme", prompt="Once", max_tokens=5, temperature=0
    )
    streamed = await client.completions.create(
        model="acme", prompt="Once", max_tokens=5, temperature=0, stream=True
    )
    text = "".join([chunk.choices[0].text async for chunk in streamed])
    assert text == whole.choices[0].text and whole.usage.completion_tokens == 5


async def test_errors_arrive_as_openai_errors(memorized) -> None:  # type: ignore[no-untyped-def]
    _, client = memorized
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert unknown.value.body["message"] == "topic not found"
    with pytest.raises(openai.UnprocessableEntityError):
        await client.chat.completions.create(model="acme", messages=[])


async def test_model_auto_routes_by_content(memorized) -> None:  # type: ignore[no-untyped-def]
    _, client = memorized
    question = [{"role": "user", "content": QA[0]["question"]}]
    routed = await client.chat.completions.create(model="auto", messages=question, temperature=0)
    assert routed.choices[0].message.content.startswith("Quiggle")
    unrelated = {"prompt": "How do volcanoes form?", "max_tokens": 6, "temperature": 0}
    routed_away = await client.completions.create(model="auto", **unrelated)
    base_id = (await client.models.list()).data[0].id
    base = await client.completions.create(model=base_id, **unrelated)
    # Nothing matched: the base model answered, exactly as when asked by name.
    assert routed_away.choices[0].text == base.choices[0].text
