"""Composing LoRA modules into one adapter (loramem/serving/composition.py, lora_weights.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loramem.core.adapter_store import StoredAdapter
from loramem.serving.composition import composition_weights, write_sum, write_ties


def _deltas(folder: Path) -> dict[str, torch.Tensor]:
    state = load_file(folder / "adapter_model.safetensors")
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    return {
        key: state[key.replace(".lora_A.", ".lora_B.")] @ state[key] * scale
        for key in state
        if ".lora_A." in key
    }


@pytest.fixture
def folder_of(make_adapter: Callable[..., StoredAdapter]) -> Callable[..., Path]:
    def make(seed: int, **kwargs: object) -> Path:
        return make_adapter.store / make_adapter(seed, **kwargs).relative_path  # type: ignore[attr-defined,no-any-return]

    return make


def test_a_sum_is_exactly_the_weighted_sum_of_the_updates(
    folder_of: Callable[..., Path], tmp_path: Path
) -> None:
    parts = [
        (folder_of(111, rank=2), 1.0),
        (folder_of(112, rank=8), 0.5),
        (folder_of(113, rank=4, targets=["q_proj", "down_proj"]), 1.0),
    ]
    assert write_sum(parts, tmp_path / "sum") == 14
    config = json.loads((tmp_path / "sum" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 14
    targets = [json.loads((f / "adapter_config.json").read_text()) for f, _ in parts]
    assert set(config["target_modules"]) == {n for t in targets for n in t["target_modules"]}
    summed, deltas = _deltas(tmp_path / "sum"), [_deltas(folder) for folder, _ in parts]
    assert summed.keys() == deltas[0].keys()
    for key, delta in summed.items():
        expected = sum(
            weight * d[key] for (_, weight), d in zip(parts, deltas, strict=True) if key in d
        )
        torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-4)
    # Every layer has the summed rank, also where a part adapts nothing (vLLM requires it).
    state = load_file(tmp_path / "sum" / "adapter_model.safetensors")
    assert {t.shape[0] for k, t in state.items() if ".lora_A." in k} == {14}
    assert not (tmp_path / "sum.staging").exists()


def test_weights_follow_the_routing_scores_against_the_best_one() -> None:
    assert composition_weights("sum", [0.9, 0.3, 0.1]) == [1.0, 1.0, 1.0]
    assert composition_weights("weighted", [0.8, 0.4, 0.1]) == [1.0, 0.5, 0.1]
    assert composition_weights("weighted", [0.8, -0.2]) == [1.0, 0.0]
    assert composition_weights("weighted", [0.0, 0.0]) == [1.0, 1.0]


def test_one_module_merged_by_ties_alone_is_itself(
    folder_of: Callable[..., Path], tmp_path: Path
) -> None:
    folder = folder_of(101)
    assert write_ties([folder], tmp_path / "merged", density=1.0) == 4
    merged, original = _deltas(tmp_path / "merged"), _deltas(folder)
    assert merged.keys() == original.keys()
    for key, delta in original.items():
        torch.testing.assert_close(merged[key], delta, atol=1e-4, rtol=1e-3)


def test_ties_keeps_the_shared_update_of_modules_with_their_ranks_added_up(
    folder_of: Callable[..., Path], tmp_path: Path
) -> None:
    folders = [folder_of(102, rank=2), folder_of(103, rank=8)]
    assert write_ties(folders, tmp_path / "merged", density=0.5) == 10
    config = json.loads((tmp_path / "merged" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 10
    merged, parts = _deltas(tmp_path / "merged"), [_deltas(f) for f in folders]
    key = next(iter(merged))
    # TIES keeps, per entry, only values whose sign matches the elected one: the merged update
    # never points against both modules.
    against_both = (torch.sign(merged[key]) * torch.sign(parts[0][key]) < 0) & (
        torch.sign(merged[key]) * torch.sign(parts[1][key]) < 0
    )
    assert against_both.float().mean() < 0.05
    assert not (tmp_path / "merged.staging").exists()
