"""Composing several modules into one adapter with TIES merging (the paper: top-3 + TIES beats
top-1 in most closed-book settings, where plain concatenation and DARE collapse).

Each module's update ΔW = B·A·(alpha/r) is trimmed to its largest entries, a sign is elected per
entry, the entries that agree are averaged (PEFT's `ties`), and the result is factored back into
a LoRA (SVD) whose rank is the modules' ranks added up, at most the engine's largest: the sum of
k rank-r updates needs k·r, and cutting it to r (PEFT's default for its SVD merges) dropped most
of what all but the strongest module learned. Every engine loads it like any adapter.
Merged adapters are written once under the topic's folder of the store (forgetting the topic
removes them) and kept loaded for the next request that routes to the same modules.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import torch
from peft.utils.merge_utils import ties
from safetensors.torch import load_file, save_file

from server.adapter_store import CONFIG_FILE, WEIGHTS_FILE, resolve_in_store
from server.engines import Engine, LoRAAdapter
from server.engines.lora_bank import lora_scaling

log = logging.getLogger("loramem.merging")

# Merged adapters get engine ids far above the registry's version ids.
MERGED_ID_BASE = 1 << 40


def ties_merge(folders: list[Path], out: Path, density: float, max_rank: int) -> int:
    """Writes the TIES merge of the adapters in `folders` to `out`; returns its rank."""
    configs = [json.loads((f / CONFIG_FILE).read_text()) for f in folders]
    states = [load_file(f / WEIGHTS_FILE) for f in folders]
    rank = min(sum(int(c["r"]) for c in configs), max_rank)
    weights = torch.ones(len(folders))
    merged: dict[str, torch.Tensor] = {}
    for key_a in (k for k in states[0] if ".lora_A." in k):
        key_b = key_a.replace(".lora_A.", ".lora_B.")
        deltas = [
            (state[key_b].float() @ state[key_a].float()) * lora_scaling(config)
            for state, config in zip(states, configs, strict=True)
        ]
        delta = ties(deltas, weights, density)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        root = s[:rank].sqrt()
        merged[key_b] = (u[:, :rank] * root).contiguous()
        merged[key_a] = (root[:, None] * vh[:rank]).contiguous()
    config = {**configs[0], "r": rank, "lora_alpha": rank, "rank_pattern": {}, "alpha_pattern": {}}
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(merged, staging / WEIGHTS_FILE)
    (staging / CONFIG_FILE).write_text(json.dumps(config))
    os.replace(staging, out)
    return rank


class MergedAdapters:
    """Merged adapters of this server: built on first use, then kept (at most `keep` loaded)."""

    def __init__(
        self, adapter_dir: Path, engine: Engine, density: float, max_rank: int, keep: int = 4
    ) -> None:
        self.adapter_dir = adapter_dir
        self.engine = engine
        self.density = density
        self.max_rank = max_rank
        self.keep = keep
        self._loaded: OrderedDict[str, LoRAAdapter] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, topic_id: str, parts: list[LoRAAdapter]) -> LoRAAdapter:
        ids = sorted(p.lora_id for p in parts)
        key = hashlib.sha256(f"{ids}:{self.density}:{self.max_rank}".encode()).hexdigest()[:16]
        async with self._lock:
            adapter = self._loaded.get(key)
            if adapter is not None:
                self._loaded.move_to_end(key)
                return adapter
            out = resolve_in_store(self.adapter_dir, f"{topic_id}/merged/{key}")
            if not (out / WEIGHTS_FILE).is_file():
                out.parent.mkdir(parents=True, exist_ok=True)
                folders = [p.path for p in sorted(parts, key=lambda p: p.lora_id)]
                await asyncio.to_thread(ties_merge, folders, out, self.density, self.max_rank)
                log.info("merged %s into %s (TIES, density %.2f)", ids, key, self.density)
            config = json.loads((out / CONFIG_FILE).read_text())
            adapter = LoRAAdapter(
                f"merged:{key}", MERGED_ID_BASE + int(key[:8], 16), out, int(config["r"])
            )
            await self.engine.add_adapter(adapter)
            self._loaded[key] = adapter
            while len(self._loaded) > self.keep:
                _, old = self._loaded.popitem(last=False)
                await self.engine.remove_adapter(old.name)
            return adapter
