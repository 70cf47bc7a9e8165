"""Admission is held for a request's whole life: a burst cannot slip past the limit while the
requests admitted before it are still being routed or retrieved."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from loramem.core.settings import Settings
from loramem.serving.retrieval import KnowledgeIndex
from tests.helpers import running_app

FACTS = "Brightwell Bakery opened in 1994 on Mill Street. Its first loaf was a dark rye."


def _slowed(method: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    def slow(self: KnowledgeIndex, *args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)  # runs in a worker thread: the event loop takes other requests
        return method(self, *args, **kwargs)

    return slow


async def _queue_depth(http: httpx.AsyncClient) -> float:
    metrics = (await http.get("/metrics")).text
    line = next(x for x in metrics.splitlines() if x.startswith("loramem_engine_queue_depth "))
    return float(line.split()[1])


async def test_a_burst_past_the_limit_is_refused_while_routing_is_slow(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    limited = settings.model_copy(update={"max_pending_requests": 2, "embedded_worker": False})
    async with running_app(limited) as http:
        stored = await http.post("/memorize", json={"topic": "bakery", "text": FACTS})
        assert stored.status_code == 202
        rag = {"topic": "bakery", "mode": "rag", "prompt": "When did it open?", "max_tokens": 3}
        for _ in range(100):  # the index learns the text at its next poll
            answered = await http.post("/generate", json=rag)
            if answered.status_code == 200 and answered.json()["retrieved"]:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the text never reached the index")
        monkeypatch.setattr(KnowledgeIndex, "route", _slowed(KnowledgeIndex.route, 0.5))
        monkeypatch.setattr(KnowledgeIndex, "search", _slowed(KnowledgeIndex.search, 0.5))
        routed = {"topic": "auto", "prompt": "Which street is the bakery on?", "max_tokens": 3}

        replies = await asyncio.gather(
            *(http.post("/generate", json=routed if n % 2 else rag) for n in range(8))
        )

        statuses = sorted(r.status_code for r in replies)
        assert statuses == [200, 200] + [429] * 6, statuses
        for refused in (r for r in replies if r.status_code == 429):
            assert refused.json()["error"]["type"] == "overloaded"
            assert refused.headers["retry-after"] == "1"
        assert await _queue_depth(http) == 0


async def test_every_way_a_request_ends_gives_its_place_back(settings: Settings) -> None:
    single = settings.model_copy(update={"max_pending_requests": 1, "embedded_worker": False})
    async with running_app(single) as http:
        streamed = await http.post(
            "/generate", json={"prompt": "hi", "max_tokens": 4, "stream": True}
        )
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
        unknown = await http.post("/generate", json={"prompt": "hi", "topic": "nowhere"})
        assert unknown.status_code == 404
        too_long = await http.post("/generate", json={"prompt": "word " * 5000})
        assert too_long.status_code == 400
        chat = await http.post(
            "/v1/chat/completions",
            json={
                "model": "auto",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
                "stream": True,
            },
        )
        assert chat.status_code == 200
        assert await _queue_depth(http) == 0
        # One place, and it is free: a request still gets in.
        again = await http.post("/generate", json={"prompt": "hi", "max_tokens": 2})
        assert again.status_code == 200
