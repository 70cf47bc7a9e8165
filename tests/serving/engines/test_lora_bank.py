"""The LoRA bank against PEFT, the reference: same logits for every row of a mixed batch."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from loramem.core.adapter_store import CONFIG_FILE, StoredAdapter
from loramem.core.base_model import load_causal_lm
from loramem.serving.engines.lora_bank import LoRABank, UnsupportedAdapter

PROMPTS = torch.tensor([[1, 5, 9, 42, 7, 3], [2, 8, 8, 100, 4, 6], [11, 12, 13, 14, 15, 16]])


@pytest.fixture(scope="module")
def folders(make_adapter: Callable[..., StoredAdapter]) -> dict[str, Path]:
    store = make_adapter.store  # type: ignore[attr-defined]
    return {
        "r4": store / make_adapter(201).relative_path,
        "r8": store / make_adapter(202, rank=8).relative_path,
    }


def peft_logits(tiny_model_dir: Path, folder: Path | None, prompts: torch.Tensor) -> torch.Tensor:
    model, _ = load_causal_lm(tiny_model_dir)
    if folder is not None:
        model = PeftModel.from_pretrained(model, str(folder))
    with torch.inference_mode():
        return model(input_ids=prompts).logits


@torch.inference_mode()
def test_every_row_of_a_mixed_batch_gets_what_peft_gives_it(
    tiny_model_dir: Path, folders: dict[str, Path]
) -> None:
    model, _ = load_causal_lm(tiny_model_dir)
    bank = LoRABank(model)
    assert bank.add("r4", [(folders["r4"], 1.0)]) == 4
    assert bank.add("r8", [(folders["r8"], 1.0)]) == 8
    bank.select(["r8", None, "r4"])
    mixed = model(input_ids=PROMPTS).logits
    expected = [
        peft_logits(tiny_model_dir, folders["r8"], PROMPTS[0:1]),
        peft_logits(tiny_model_dir, None, PROMPTS[1:2]),
        peft_logits(tiny_model_dir, folders["r4"], PROMPTS[2:3]),
    ]
    for row, reference in enumerate(expected):
        torch.testing.assert_close(mixed[row : row + 1], reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(expected[0], peft_logits(tiny_model_dir, None, PROMPTS[0:1]))

    # The base row finishes first: the others keep their own adapters.
    bank.select(["r8", "r4"])
    torch.testing.assert_close(
        model(input_ids=PROMPTS[[0, 2]]).logits,
        torch.cat([expected[0], expected[2]]),
        atol=1e-4,
        rtol=1e-4,
    )
    # A base row joins the two left: only its matrices are new.
    bank.select(["r8", "r4", None])
    torch.testing.assert_close(
        model(input_ids=PROMPTS[[0, 2, 1]]).logits,
        torch.cat([expected[0], expected[2], expected[1]]),
        atol=1e-4,
        rtol=1e-4,
    )
    # One adapter for every row.
    bank.select(["r4", "r4"])
    torch.testing.assert_close(
        model(input_ids=PROMPTS[:2]).logits,
        peft_logits(tiny_model_dir, folders["r4"], PROMPTS[:2]),
        atol=1e-4,
        rtol=1e-4,
    )
    # Removed adapters and base-only batches leave the base model exactly as it was.
    bank.remove("r4")
    bank.remove("r8")
    assert "r4" not in bank
    bank.select([None, None, None])
    torch.testing.assert_close(
        model(input_ids=PROMPTS).logits, peft_logits(tiny_model_dir, None, PROMPTS)
    )


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda config: config | {"use_dora": True}, id="dora"),
        pytest.param(lambda config: config | {"r": 2}, id="rank-disagrees-with-weights"),
        pytest.param(lambda config: config | {"peft_type": "IA3"}, id="not-lora"),
        pytest.param(lambda config: config | {"modules_to_save": ["lm_head"]}, id="full-layers"),
    ],
)
def test_an_adapter_the_bank_cannot_apply_exactly_is_refused(
    tiny_model_dir: Path,
    folders: dict[str, Path],
    tmp_path: Path,
    spoil: Callable[[dict[str, object]], dict[str, object]],
) -> None:
    folder = tmp_path / "spoiled"
    shutil.copytree(folders["r4"], folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps(spoil(config)))
    model, _ = load_causal_lm(tiny_model_dir)
    bank = LoRABank(model)
    with pytest.raises(UnsupportedAdapter):
        bank.add("spoiled", [(folder, 1.0)])
    assert "spoiled" not in bank


def test_an_adapter_for_another_model_is_refused(
    tiny_model_dir: Path, folders: dict[str, Path]
) -> None:
    model, _ = load_causal_lm(tiny_model_dir)
    model.model.layers = model.model.layers[:1]  # the adapter's second layer has no Linear here
    with pytest.raises(UnsupportedAdapter, match="no Linear layer"):
        LoRABank(model).add("r4", [(folders["r4"], 1.0)])


@torch.inference_mode()
def test_a_composition_applies_the_weighted_sum_of_its_parts(
    tiny_model_dir: Path, make_adapter: Callable[..., StoredAdapter], folders: dict[str, Path]
) -> None:
    # A part that adapts only some layers composes with one that adapts them all.
    store = make_adapter.store  # type: ignore[attr-defined]
    attention = store / make_adapter(203, rank=2, targets=["q_proj", "v_proj"]).relative_path
    parts = [(folders["r4"], 1.0), (folders["r8"], 0.5), (attention, 1.0)]

    # The reference: the base weights with every part's update added to them, by its weight.
    reference, _ = load_causal_lm(tiny_model_dir)
    linears = dict(reference.named_modules())
    for folder, weight in parts:
        config = json.loads((folder / CONFIG_FILE).read_text())
        state = load_file(folder / "adapter_model.safetensors")
        for key_a in (key for key in state if ".lora_A." in key):
            module = key_a.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            delta = state[key_a.replace(".lora_A.", ".lora_B.")] @ state[key_a]
            linears[module].weight += delta * (config["lora_alpha"] / config["r"]) * weight

    model, _ = load_causal_lm(tiny_model_dir)
    bank = LoRABank(model)
    assert bank.add("sum", parts) == 14
    assert bank.add("r4", [(folders["r4"], 1.0)]) == 4
    bank.select(["sum", "r4", None])
    mixed = model(input_ids=PROMPTS).logits
    torch.testing.assert_close(
        mixed[0:1], reference(input_ids=PROMPTS[0:1]).logits, atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        mixed[1:2], peft_logits(tiny_model_dir, folders["r4"], PROMPTS[1:2]), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        mixed[2:3], peft_logits(tiny_model_dir, None, PROMPTS[2:3]), atol=1e-4, rtol=1e-4
    )
