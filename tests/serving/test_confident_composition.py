"""Composing by confidence: every candidate module starts its answer, the surest after a few
tokens goes on alone, the others' engine rows are freed (a scripted engine: fast and exact)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from loramem.core.decoding import SamplingParams
from loramem.core.metrics import Metrics
from loramem.serving.admission import Admission
from loramem.serving.engines import Engine, GenerationOutput, LoRAAdapter
from loramem.serving.generation import GenerationService
from loramem.serving.planner import Plan


class ScriptedEngine(Engine):
    """Each adapter answers its script: (token, log-probability) pairs, one output a token."""

    kind = "scripted"

    def __init__(self, scripts: dict[str, list[tuple[str, float]]]) -> None:
        self.scripts = scripts
        self.said: dict[str, int] = {}  # tokens produced per adapter
        self.closed: set[str] = set()  # adapters whose answers stopped before their end

    @property
    def tokenizer(self) -> Any:
        return None

    @property
    def max_model_len(self) -> int:
        return 1024

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def add_adapter(self, adapter: LoRAAdapter) -> None: ...

    async def remove_adapter(self, name: str) -> None: ...

    def resident_adapters(self) -> list[str]:
        return list(self.scripts)

    async def abort(self, request_id: str) -> None: ...

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        adapter: LoRAAdapter | None = None,
    ) -> AsyncGenerator[GenerationOutput]:
        assert adapter is not None
        script = self.scripts[adapter.name][: params.max_tokens]
        finished = False
        try:
            for n in range(1, len(script) + 1):
                await asyncio.sleep(0)  # one engine step: the other rows advance too
                self.said[adapter.name] = n
                finished = n == len(script)
                yield GenerationOutput(
                    request_id,
                    "".join(token for token, _ in script[:n]),
                    token_ids=list(range(n)),
                    finished=finished,
                    finish_reason="stop" if finished else None,
                    logprob=sum(p for _, p in script[:n]),
                )
        finally:
            if not finished:
                self.closed.add(adapter.name)


def _adapter(name: str) -> LoRAAdapter:
    return LoRAAdapter(name, 1, Path("/nonexistent") / name, 4)


def _service(engine: Engine) -> GenerationService:
    return GenerationService(engine, None, Admission(4), Metrics())  # type: ignore[arg-type]


def _plan(names: list[str], confident_tokens: int, max_tokens: int = 16) -> Plan:
    return Plan(
        request_id="r",
        prompt_ids=[1, 2, 3],
        params=SamplingParams(max_tokens=max_tokens, logprobs=True),
        topic="t",
        mode="lora",
        modules=[],
        adapter=None,
        retrieved=[],
        candidates=tuple(_adapter(n) for n in names),
        confident_tokens=confident_tokens,
    )


async def _outputs(service: GenerationService, plan: Plan) -> list[GenerationOutput]:
    return [output async for output in service._run(plan)]


SURE = [("1921", -0.1), (".", -0.2)]
LONG_UNSURE = [(f" word{n}", -2.0) for n in range(12)]


async def test_the_surest_goes_on_alone_after_the_deciding_tokens() -> None:
    engine = ScriptedEngine({"sure": SURE * 4, "unsure": LONG_UNSURE, "other": LONG_UNSURE})
    outputs = await _outputs(_service(engine), _plan(["unsure", "sure", "other"], 2))
    assert outputs[-1].finished and outputs[-1].text == "1921." * 4
    # Streaming starts once chosen, and goes on token by token.
    assert [len(o.token_ids) for o in outputs] == list(range(2, 9))
    # The others said their deciding tokens (and at most one more, a step in flight), no more.
    assert engine.said["unsure"] <= 3 and engine.said["other"] <= 3
    assert engine.closed == {"unsure", "other"}


async def test_an_answer_finished_early_is_judged_whole() -> None:
    engine = ScriptedEngine({"short": [("Vellmark", -0.05)], "rambling": LONG_UNSURE})
    outputs = await _outputs(_service(engine), _plan(["rambling", "short"], 4))
    assert [o.text for o in outputs] == ["Vellmark"]
    assert engine.closed == {"rambling"}


async def test_zero_deciding_tokens_waits_for_every_whole_answer() -> None:
    # Sure at first, unsure later: judged on its whole answer it loses.
    fading = [("A", -0.01)] * 2 + [("b", -5.0)] * 6
    steady = [("C", -0.5)] * 8
    engine = ScriptedEngine({"fading": fading, "steady": steady})
    by_prefix = await _outputs(_service(engine), _plan(["fading", "steady"], 2))
    assert by_prefix[-1].text.startswith("AA")
    engine = ScriptedEngine({"fading": fading, "steady": steady})
    whole = await _outputs(_service(engine), _plan(["fading", "steady"], 0))
    assert [o.text for o in whole] == ["C" * 8]
    assert engine.closed == set()


async def test_a_request_gone_stops_every_candidate() -> None:
    engine = ScriptedEngine({"a": LONG_UNSURE, "b": LONG_UNSURE, "c": LONG_UNSURE})
    outputs = _service(engine)._run(_plan(["a", "b", "c"], 4))
    first = await anext(outputs)
    assert len(first.token_ids) == 4
    await outputs.aclose()
    assert engine.closed == {"a", "b", "c"}
    assert max(engine.said.values()) <= 5
