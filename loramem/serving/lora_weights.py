"""LoRA adapters as PEFT writes them (a config and A/B matrices): read, summed, written.

The sum of several adapters is exact without any merge: stacking their A matrices along the rank
and their B matrices (each scaled by its alpha/r and its weight) beside each other gives
B_cat·A_cat = Σ wᵢ·sᵢ·Bᵢ·Aᵢ, one LoRA whose rank is theirs added up (PEFT's `cat`). The HF
engine's bank sums in memory with it; vLLM, which takes one adapter per request, gets it as a file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from loramem.core.adapter_store import CONFIG_FILE, WEIGHTS_FILE

Config = dict[str, Any]
State = dict[str, torch.Tensor]


def lora_scaling(config: Config) -> float:
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha") or rank)
    return alpha / (rank**0.5 if config.get("use_rslora") else rank)


def read_lora(folder: Path) -> tuple[Config, State]:
    return json.loads((folder / CONFIG_FILE).read_text()), load_file(folder / WEIGHTS_FILE)


def summed_lora(parts: Sequence[tuple[Config, State, float]]) -> tuple[Config, State]:
    """One LoRA whose update is the weighted sum of the parts' updates (ranks added up).

    A part that does not adapt a layer the others adapt contributes zeros there, so every layer
    has the same rank (vLLM requires it); parts of different ranks compose as they are.
    """
    rank = sum(int(config["r"]) for config, _, _ in parts)
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    for _, state, _ in parts:
        for key_a in (key for key in state if ".lora_A." in key):
            shapes.setdefault(key_a, (state[key_a].shape, state[_b_key(key_a)].shape))
    summed: State = {}
    for key_a, (shape_a, shape_b) in shapes.items():
        a_parts, b_parts = [], []
        for config, state, weight in parts:
            part_rank = int(config["r"])
            if key_a in state:
                a_parts.append(state[key_a].float())
                b_parts.append(state[_b_key(key_a)].float() * (lora_scaling(config) * weight))
            else:
                a_parts.append(torch.zeros(part_rank, shape_a[1]))
                b_parts.append(torch.zeros(shape_b[0], part_rank))
        summed[key_a] = torch.cat(a_parts).contiguous()
        summed[_b_key(key_a)] = torch.cat(b_parts, dim=1).contiguous()
    first = parts[0][0]
    config = {
        **first,
        "r": rank,
        "lora_alpha": rank,  # the scalings are folded into B: alpha / r = 1
        "use_rslora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_modules": _union_of_targets([config for config, _, _ in parts]),
    }
    return config, summed


def write_lora(config: Config, state: State, out: Path) -> None:
    """Writes an adapter folder atomically: a reader sees all of it or nothing."""
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(state, staging / WEIGHTS_FILE)
    (staging / CONFIG_FILE).write_text(json.dumps(config))
    os.replace(staging, out)


def _b_key(key_a: str) -> str:
    return key_a.replace(".lora_A.", ".lora_B.")


def _union_of_targets(configs: list[Config]) -> Any:
    """The layers any part adapts (PEFT writes a list; a pattern string is kept as it is)."""
    targets = [config.get("target_modules") for config in configs]
    lists = [t for t in targets if isinstance(t, list)]
    if len(lists) == len(targets):
        return sorted({name for names in lists for name in names})
    return targets[0]
