"""A topic that outgrows one module: split by capacity, only changed modules retrained, requests
routed to the module that learned the fact, top-k modules composed (tiny model)."""

from __future__ import annotations

import json

import httpx

from loramem.core.settings import Settings
from tests.helpers import running_app, wait_job

LEARN = {"steps": 40, "learning_rate": 0.01, "dropout": 0.0, "rank": 4}
FACTS = [
    {"question": "What is the name of Zorblax's pet?", "answer": "Quiggle"},
    {"question": "Which city hosts the Vendrell Cup?", "answer": "Talvenna"},
    {"question": "What colour is the Ostra lighthouse?", "answer": "Violet"},
]


async def _memorize(client: httpx.AsyncClient, qa: list[dict[str, str]]) -> dict:
    queued = await client.post("/memorize", json={"topic": "atlas", "qa": qa, "options": LEARN})
    job = await wait_job(client, queued.json()["job_id"])
    assert job["status"] == "succeeded", job
    return job


async def test_a_topic_split_into_modules_answers_from_the_right_one(settings: Settings) -> None:
    # Capacity 4 x 4 = 16 tokens a module: one fact (11-12 tokens) fills it.
    small_modules = settings.model_copy(update={"module_tokens_per_rank": 4})
    async with running_app(small_modules) as client:
        first = await _memorize(client, FACTS[:2])
        events = (await client.get(f"/jobs/{first['id']}/events")).json()["events"]
        [succeeded] = [e["data"] for e in events if e["kind"] == "succeeded"]
        assert [(m["module"], m["version"]) for m in succeeded["modules"]] == [(0, 1), (1, 2)]
        # Each module stopped once its fact was exact; the job counts the steps taken, not
        # the budgets of the modules before the last.
        steps = [m["steps"] for m in succeeded["modules"]]
        assert all(0 < s < LEARN["steps"] for s in steps), steps
        assert first["step"] == sum(steps) and first["total_steps"] == 2 * LEARN["steps"]

        second = await _memorize(client, FACTS[2:])
        events = (await client.get(f"/jobs/{second['id']}/events")).json()["events"]
        [succeeded] = [e["data"] for e in events if e["kind"] == "succeeded"]
        # Only the new module was trained; the others keep their versions.
        assert [(m["module"], m["version"]) for m in succeeded["modules"]] == [(2, 3)]

        detail = (await client.get("/admin/topics/atlas")).json()
        assert detail["modules"] == 3
        assert [
            (m["module"], m["active_version"], m["items"]) for m in detail["knowledge_modules"]
        ] == [
            (0, 1, 1),
            (1, 2, 1),
            (2, 3, 1),
        ]
        assert all(m["tokens"] <= m["capacity_tokens"] == 16 for m in detail["knowledge_modules"])
        assert [d["module"] for d in detail["documents"]] == [0, 1, 2]

        for module, fact in enumerate(FACTS):
            body = (
                await client.post(
                    "/generate",
                    json={"prompt": fact["question"], "topic": "atlas", "max_tokens": 6},
                )
            ).json()
            [used] = body["adapters"]
            assert used["module"] == module and used["version"] == module + 1
            assert body["text"].startswith(fact["answer"]), body

        # The top 3 modules summed, best match first; the HF engine's bank applies
        # the sum from the modules' own files, writing none. (That the bank's sum is exact is
        # tested against merged weights; whether a sum keeps each fact is measured on the default
        # model by bench.recall: this random 2-layer model's updates are no guide to it.)
        for module, fact in enumerate(FACTS):
            composed = await _ask(client, fact["question"], top_k=3, compose="sum")
            assert sorted(a["module"] for a in composed["adapters"]) == [0, 1, 2]
            assert composed["adapters"][0]["module"] == module
        engine = (await client.get("/admin/engine")).json()
        assert any(name.startswith("composed:") for name in engine["adapters"])

        # By confidence: each of the top 3 answers, the surest answer is kept, its module first.
        # Judged after one token instead (`confident_tokens`), a module that learned another
        # answer can win on that answer's first token, whatever is asked: here, once.
        early = [
            await _ask(client, fact["question"], top_k=3, confident_tokens=1) for fact in FACTS
        ]
        assert all(sorted(a["module"] for a in e["adapters"]) == [0, 1, 2] for e in early)
        assert [e["text"].startswith(f["answer"]) for e, f in zip(early, FACTS, strict=True)] == [
            True,
            True,
            False,
        ]
        for module, fact in enumerate(FACTS):
            for stream in (False, True):
                confident = await _ask(
                    client, fact["question"], top_k=3, compose="confident", stream=stream
                )
                assert confident["text"].startswith(fact["answer"]), confident
                assert sorted(a["module"] for a in confident["adapters"]) == [0, 1, 2]
                assert confident["adapters"][0]["module"] == module
        assert engine["active_modules"] == {"atlas/0": 1, "atlas/1": 2, "atlas/2": 3}
        [topic_dir] = [d for d in settings.resolved_adapter_dir.iterdir() if d.name != ".staging"]
        assert not (topic_dir / "composed").exists()

        # TIES is written as a file once, under the topic's folder.
        merged = await _ask(client, FACTS[1]["question"], top_k=2, compose="ties")
        assert [a["module"] for a in merged["adapters"]] in ([1, 0], [1, 2])
        assert len(list((topic_dir / "composed").iterdir())) == 1
        # /v1 takes the same fields (the openai client's `extra_body`).
        completion = await client.post(
            "/v1/completions",
            json={"model": "atlas", "prompt": FACTS[0]["question"], "max_tokens": 4}
            | {"top_k": 3, "compose": "ties"},
        )
        assert completion.status_code == 200, completion.text
        assert len(list((topic_dir / "composed").iterdir())) == 2
        refused = await client.post(
            "/generate", json={"prompt": "x", "topic": "atlas", "compose": "average"}
        )
        assert refused.status_code == 422
        refused = await client.post(
            "/generate", json={"prompt": "x", "topic": "atlas", "confident_tokens": -1}
        )
        assert refused.status_code == 422

    # An engine that takes rank 8 at most composes the best two r4 modules, and says so.
    async with running_app(small_modules.model_copy(update={"max_lora_rank": 8})) as client:
        cut = await _ask(client, FACTS[2]["question"], top_k=3, compose="sum")
        assert [a["module"] for a in cut["adapters"]][:1] == [2]
        assert len(cut["adapters"]) == 2
        # By confidence each module answers alone: no summed rank to limit.
        every = await _ask(client, FACTS[2]["question"], top_k=3)  # confident, the default
        assert len(every["adapters"]) == 3
        # More modules asked for than the topic has: the ones there are.
        assert len((await _ask(client, FACTS[0]["question"], top_k=8))["adapters"]) == 3

        # Forgetting removes the composed adapters with the rest of the topic's files.
        assert (await client.delete("/admin/topics/atlas")).status_code == 200
        assert [p.name for p in settings.resolved_adapter_dir.iterdir()] == [".staging"]


async def test_a_long_text_is_learned_by_a_module_a_part(settings: Settings) -> None:
    paragraphs = [
        "Brightwell Bakery opened in 1994 on Mill Street, in an empty shop.",
        "Its first loaf, a dark rye called Anchor, is still baked every morning.",
    ]
    small_modules = settings.model_copy(update={"module_tokens_per_rank": 6})
    async with running_app(small_modules) as client:
        queued = await client.post(
            "/memorize",
            json={
                "topic": "bakery",
                "text": "\n\n".join(paragraphs),
                "options": {**LEARN, "steps": 4, "augment": "none"},
            },
        )
        job = await wait_job(client, queued.json()["job_id"])
        assert job["status"] == "succeeded", job
        detail = (await client.get("/admin/topics/bakery")).json()
        assert [(d["text"], d["module"]) for d in detail["documents"]] == [
            (paragraphs[0], 0),
            (paragraphs[1], 1),
        ]
        assert [m["active_version"] for m in detail["knowledge_modules"]] == [1, 2]


async def _ask(client: httpx.AsyncClient, question: str, **request: object) -> dict:
    response = await client.post(
        "/generate", json={"prompt": question, "topic": "atlas", "max_tokens": 6, **request}
    )
    assert response.status_code == 200, response.text
    if not request.get("stream"):
        return response.json()
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(c["text"] for c in chunks[:-1]) == chunks[-1]["text"]
    return chunks[-1]
