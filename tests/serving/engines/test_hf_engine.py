"""The HF + PEFT engine on a tiny Llama: mixed batches, LRU residency, abort, bad adapters."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from transformers import GenerationConfig

from loramem.core.adapter_store import StoredAdapter
from loramem.serving.engines import (
    AdapterLoadError,
    EngineError,
    GenerationOutput,
    LoRAAdapter,
    SamplingParams,
)
from loramem.serving.engines.hf import HFEngine
from tests.helpers import OTHER_PROMPT, PROMPT, generate_all


@pytest.fixture
async def engine(tiny_model_dir: Path) -> AsyncIterator[HFEngine]:
    hf = HFEngine(tiny_model_dir, max_batch_size=16, max_resident_adapters=2)
    await hf.start()
    yield hf
    await hf.shutdown()


@pytest.fixture(scope="module")
def adapters(make_adapter: Callable[..., StoredAdapter]) -> list[LoRAAdapter]:
    made = [make_adapter(seed) for seed in (1, 2, 3)]
    return [
        LoRAAdapter(f"a{n + 1}", n + 1, make_adapter.store / a.relative_path, 4)  # type: ignore[attr-defined]
        for n, a in enumerate(made)
    ]


async def test_mixed_batch_gives_every_row_its_own_adapter(
    engine: HFEngine, adapters: list[LoRAAdapter]
) -> None:
    a1, a2 = adapters[0], adapters[1]
    alone = [
        (await generate_all(engine, PROMPT)).token_ids,
        (await generate_all(engine, PROMPT, a1)).token_ids,
        (await generate_all(engine, OTHER_PROMPT, a2)).token_ids,
    ]
    assert alone[0] != alone[1], "the adapter must change the output for this test to mean anything"
    served_before = engine.stats["batches"]
    mixed = await asyncio.gather(
        generate_all(engine, PROMPT, request_id="base"),
        generate_all(engine, PROMPT, a1, request_id="one"),
        generate_all(engine, OTHER_PROMPT, a2, request_id="two"),
    )
    assert [output.token_ids for output in mixed] == alone
    assert engine.stats["batches"] == served_before + 1, "concurrent requests share one batch"


async def test_resident_adapters_are_bounded_least_recently_used_first(
    engine: HFEngine, adapters: list[LoRAAdapter]
) -> None:
    first = (await generate_all(engine, PROMPT, adapters[0])).token_ids
    await generate_all(engine, PROMPT, adapters[1])
    await generate_all(engine, PROMPT, adapters[2])
    assert engine.resident_adapters() == ["a2", "a3"]
    # An evicted adapter loads again on demand, with the same weights.
    assert (await generate_all(engine, PROMPT, adapters[0])).token_ids == first
    assert engine.resident_adapters() == ["a3", "a1"]


async def test_a_request_joins_the_running_batch_and_leaves_before_it_ends(
    engine: HFEngine, adapters: list[LoRAAdapter]
) -> None:
    long = SamplingParams(max_tokens=120, ignore_eos=True)
    short = SamplingParams(max_tokens=6, ignore_eos=True)
    long_alone = (await _last(engine.generate("a", PROMPT, long))).token_ids
    short_alone = (await _last(engine.generate("b", OTHER_PROMPT, short, adapters[0]))).token_ids

    running = engine.generate("long", PROMPT, long)
    first = await anext(running)
    rest = asyncio.create_task(_last(running))
    joined = await _last(engine.generate("short", OTHER_PROMPT, short, adapters[0]))
    assert not rest.done(), "the short request had to wait for the long one"
    assert joined.token_ids == short_alone
    # A new adapter loads between two steps of the running request, not after it.
    await engine.add_adapter(adapters[1])
    assert not rest.done()
    assert len(first.token_ids) == 1 and (await rest).token_ids == long_alone


async def _last(outputs: AsyncIterator[GenerationOutput]) -> GenerationOutput:
    return [output async for output in outputs][-1]


async def test_ignore_eos_decodes_past_end_of_text_to_max_tokens(
    engine: HFEngine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Random weights rarely end a text, so the model is given an end-of-text token it does
    # emit: the sixth token of its greedy answer (which ends the output, unlisted).
    fixed = SamplingParams(max_tokens=40, ignore_eos=True)
    tokens = (await _last(engine.generate("free", PROMPT, fixed))).token_ids
    end = tokens[5]
    assert end not in tokens[:5]
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = GenerationConfig.from_pretrained(model)
    config.eos_token_id = [end]
    config.save_pretrained(model)
    ending = HFEngine(model, max_batch_size=4)
    await ending.start()
    try:
        plain = await _last(ending.generate("plain", PROMPT, SamplingParams(max_tokens=40)))
        assert plain.finish_reason == "stop" and plain.token_ids == tokens[:5]
        past = await _last(ending.generate("past", PROMPT, fixed))
        assert past.finish_reason == "length" and past.token_ids == tokens
    finally:
        await ending.shutdown()


async def test_streaming_outputs_are_cumulative(engine: HFEngine) -> None:
    outputs = [o async for o in engine.generate("s", PROMPT, SamplingParams(max_tokens=12))]
    assert outputs[-1].finished and outputs[-1].finish_reason in ("stop", "length")
    assert all(not o.finished for o in outputs[:-1])
    for before, after in itertools.pairwise(outputs):
        assert after.text.startswith(before.text)


async def test_abort_stops_a_request_and_leaves_others_alone(engine: HFEngine) -> None:
    long = SamplingParams(max_tokens=400)

    async def abort_after_first_output() -> GenerationOutput:
        outputs = engine.generate("victim", PROMPT, long)
        await anext(outputs)
        await engine.abort("victim")
        return [o async for o in outputs][-1]

    aborted, other = await asyncio.gather(
        abort_after_first_output(), generate_all(engine, OTHER_PROMPT, request_id="other")
    )
    assert aborted.finish_reason == "abort" and len(aborted.token_ids) < 400
    assert other.finished and other.finish_reason != "abort"


async def test_a_bad_adapter_fails_cleanly_and_the_engine_keeps_serving(
    engine: HFEngine, tmp_path: Path, adapters: list[LoRAAdapter]
) -> None:
    base_before = (await generate_all(engine, PROMPT)).token_ids
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(
        (adapters[0].path / "adapter_config.json").read_text()
    )
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterLoadError):  # as the first adapter, and beside a loaded one
        await engine.add_adapter(LoRAAdapter("broken", 99, broken, 4))
    with_adapter = (await generate_all(engine, PROMPT, adapters[0])).token_ids
    with pytest.raises(AdapterLoadError):
        await engine.add_adapter(LoRAAdapter("broken", 99, broken, 4))
    assert engine.resident_adapters() == ["a1"]
    assert (await generate_all(engine, PROMPT)).token_ids == base_before
    assert (await generate_all(engine, PROMPT, adapters[0])).token_ids == with_adapter


async def test_sampling_with_a_seed_is_reproducible(engine: HFEngine) -> None:
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    runs = [[o async for o in engine.generate(f"s{n}", PROMPT, params)][-1] for n in range(2)]
    assert runs[0].token_ids == runs[1].token_ids


async def test_a_vanishing_temperature_is_greedy_not_an_error(engine: HFEngine) -> None:
    greedy = await generate_all(engine, PROMPT, request_id="g")
    params = SamplingParams(max_tokens=8, temperature=1.175494351e-38)
    tiny = [o async for o in engine.generate("t", PROMPT, params)][-1]
    assert tiny.token_ids == greedy.token_ids


async def test_a_vanishing_top_p_keeps_the_most_likely_token(engine: HFEngine) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.25, top_p=4.7e-233, seed=1)
    output = [o async for o in engine.generate("p", PROMPT, params)][-1]
    assert output.token_ids == (await generate_all(engine, PROMPT, max_tokens=4)).token_ids


async def test_the_logprob_of_an_answer_is_what_the_model_gives_its_tokens(
    engine: HFEngine, adapters: list[LoRAAdapter], tiny_model_dir: Path
) -> None:
    import torch

    from loramem.core.base_model import load_causal_lm
    from loramem.serving.engines.lora_bank import LoRABank

    params = SamplingParams(max_tokens=6, ignore_eos=True, logprobs=True)
    outputs = await asyncio.gather(
        *(
            _final(engine.generate(f"lp-{n}", PROMPT, params, adapter))
            for n, adapter in enumerate([None, adapters[0]])
        )
    )
    model, _ = load_causal_lm(tiny_model_dir)
    bank = LoRABank(model)
    bank.add("a1", [(adapters[0].path, 1.0)])
    for output, adapter in zip(outputs, [None, "a1"], strict=True):
        bank.select([adapter])
        ids = torch.tensor([PROMPT + output.token_ids])
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, len(PROMPT) - 1 : -1], -1)
        expected = logprobs.gather(1, torch.tensor(output.token_ids)[:, None]).sum().item()
        assert output.logprob == pytest.approx(expected, abs=1e-3)
    assert (await generate_all(engine, PROMPT)).logprob is None  # only when asked for


async def _final(outputs: AsyncIterator[GenerationOutput]) -> GenerationOutput:
    return [output async for output in outputs][-1]


async def test_the_engines_thread_ends_when_idle_and_a_new_request_starts_another(
    tiny_model_dir: Path, adapters: list[LoRAAdapter]
) -> None:
    hf = HFEngine(tiny_model_dir, idle_seconds=0.05)
    await hf.start()
    try:
        first = await generate_all(hf, PROMPT, adapters[0])
        thread = hf._thread
        assert thread is not None
        await asyncio.to_thread(thread.join, 5)
        assert not thread.is_alive() and hf._thread is None
        again = await generate_all(hf, PROMPT, adapters[0])
        assert again.token_ids == first.token_ids
        assert hf.resident_adapters() == ["a1"] and hf.stats["adapter_loads"] == 1
    finally:
        await hf.shutdown()
    with pytest.raises(EngineError):
        await generate_all(hf, PROMPT)
