"""TIES merging of LoRA modules into one adapter (server/merging.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from server.adapter_store import StoredAdapter
from server.merging import ties_merge


def _deltas(folder: Path) -> dict[str, torch.Tensor]:
    state = load_file(folder / "adapter_model.safetensors")
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    return {
        key: state[key.replace(".lora_A.", ".lora_B.")] @ state[key] * scale
        for key in state
        if ".lora_A." in key
    }


def test_one_module_merged_alone_is_itself(
    make_adapter: Callable[..., StoredAdapter], tmp_path: Path
) -> None:
    stored = make_adapter(seed=101, rank=4)
    folder = make_adapter.store / stored.relative_path  # type: ignore[attr-defined]
    assert ties_merge([folder], tmp_path / "merged", density=1.0, max_rank=64) == 4
    merged, original = _deltas(tmp_path / "merged"), _deltas(folder)
    assert merged.keys() == original.keys()
    for key, delta in original.items():
        torch.testing.assert_close(merged[key], delta, atol=1e-4, rtol=1e-3)


def test_modules_that_agree_keep_their_shared_update_with_their_ranks_added_up(
    make_adapter: Callable[..., StoredAdapter], tmp_path: Path
) -> None:
    store: Path = make_adapter.store  # type: ignore[attr-defined]
    small, large = make_adapter(seed=102, rank=2), make_adapter(seed=103, rank=8)
    folders = [store / small.relative_path, store / large.relative_path]
    assert ties_merge(folders, tmp_path / "merged", density=0.5, max_rank=64) == 10
    config = json.loads((tmp_path / "merged" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 10
    assert ties_merge(folders, tmp_path / "capped", density=0.5, max_rank=8) == 8
    merged, parts = _deltas(tmp_path / "merged"), [_deltas(f) for f in folders]
    key = next(iter(merged))
    # TIES keeps, per entry, only values whose sign matches the elected one: the merged update
    # never points against both modules.
    against_both = (torch.sign(merged[key]) * torch.sign(parts[0][key]) < 0) & (
        torch.sign(merged[key]) * torch.sign(parts[1][key]) < 0
    )
    assert against_both.float().mean() < 0.05
    assert not (tmp_path / "merged.staging").exists()
