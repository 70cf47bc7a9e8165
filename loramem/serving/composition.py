"""Composing a topic's best-matching modules into the adapter that answers one request.

Methods (`LORAMEM_COMPOSE`, or `compose` per request):
- `sum`: the modules' updates added, exactly (`lora_weights.summed_lora`): where modules
  leave each other's facts alone, adding keeps what each knows, where averaging (TIES) keeps a
  k-th of each update.
- `weighted`: the same, each module scaled by its routing score over the best one's (rounded to
  tenths, so that similar requests share one composition): a module the router trusts less
  counts less.
- `ties`: TIES merging (PEFT's `ties`: each update trimmed to its largest entries, a sign elected
  per entry, the agreeing entries averaged), factored back into a LoRA by SVD. Kept to compare.
- `confident` makes no adapter: each module answers on its own and the generation service keeps
  the answer the model is surest of (`loramem/serving/generation.py`).

The HF engine applies a sum from the modules' own folders (its LoRA bank stacks their matrices);
for any other engine, and for TIES, the composed adapter is written once under the topic's folder
of the store (forgetting the topic removes it). Compositions stay loaded for the next request
that routes to the same modules, the least recently used unloaded past `keep`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from peft.utils.merge_utils import ties

from loramem.core.adapter_store import WEIGHTS_FILE, resolve_in_store
from loramem.core.settings import ComposeMethod
from loramem.serving.engines import Engine, LoRAAdapter
from loramem.serving.lora_weights import lora_scaling, read_lora, summed_lora, write_lora

log = logging.getLogger("loramem.composition")

# Composed adapters get engine ids far above the registry's version ids.
COMPOSED_ID_BASE = 1 << 40


def composition_weights(method: ComposeMethod, scores: Sequence[float]) -> list[float]:
    """Each module's weight in the sum: 1 each, or its score over the best one's."""
    best = max(scores)
    if method != "weighted" or best <= 0:
        return [1.0] * len(scores)
    return [round(max(score, 0.0) / best, 1) for score in scores]


def write_sum(parts: Sequence[tuple[Path, float]], out: Path) -> int:
    """Writes the weighted sum of the adapters in the folders to `out`; returns its rank."""
    config, state = summed_lora([(*read_lora(folder), weight) for folder, weight in parts])
    write_lora(config, state, out)
    return int(config["r"])


def write_ties(folders: Sequence[Path], out: Path, density: float) -> int:
    """Writes the TIES merge of the adapters in `folders` to `out`; returns its rank (theirs
    added up: cutting the SVD to one module's rank dropped most of what the others learned)."""
    loaded = [read_lora(folder) for folder in folders]
    rank = sum(int(config["r"]) for config, _ in loaded)
    weights = torch.ones(len(loaded))
    merged = {}
    for key_a in (k for k in loaded[0][1] if ".lora_A." in k):
        key_b = key_a.replace(".lora_A.", ".lora_B.")
        deltas = [
            (state[key_b].float() @ state[key_a].float()) * lora_scaling(config)
            for config, state in loaded
        ]
        u, s, vh = torch.linalg.svd(ties(deltas, weights, density), full_matrices=False)
        root = s[:rank].sqrt()
        merged[key_b] = (u[:, :rank] * root).contiguous()
        merged[key_a] = (root[:, None] * vh[:rank]).contiguous()
    config = {
        **loaded[0][0],
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    write_lora(config, merged, out)
    return rank


class ComposedAdapters:
    """The compositions this server has built: made on first use, then kept (at most `keep`)."""

    def __init__(self, adapter_dir: Path, engine: Engine, density: float, keep: int = 4) -> None:
        self.adapter_dir = adapter_dir
        self.engine = engine
        self.density = density
        self.keep = keep
        self._loaded: OrderedDict[str, LoRAAdapter] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(
        self, topic_id: str, parts: Sequence[tuple[LoRAAdapter, float]], method: ComposeMethod
    ) -> LoRAAdapter:
        """The adapter composing `parts` (each with its routing score) by `method`."""
        weights = composition_weights(method, [score for _, score in parts])
        weighted = sorted(
            ((adapter, weight) for (adapter, _), weight in zip(parts, weights, strict=True)),
            key=lambda part: part[0].lora_id,
        )
        recipe = [(adapter.lora_id, weight) for adapter, weight in weighted]
        detail = f"density {self.density}" if method == "ties" else f"weights {weights}"
        key = hashlib.sha256(f"{method}:{recipe}:{self.density}".encode()).hexdigest()[:16]
        async with self._lock:
            adapter = self._loaded.get(key)
            if adapter is not None:
                self._loaded.move_to_end(key)
                return adapter
            out = resolve_in_store(self.adapter_dir, f"{topic_id}/composed/{key}")
            sources = tuple((adapter.path, weight) for adapter, weight in weighted)
            rank = sum(adapter.rank for adapter, _ in weighted)
            in_memory = method != "ties" and self.engine.sums_adapters
            if not in_memory and not (out / WEIGHTS_FILE).is_file():
                out.parent.mkdir(parents=True, exist_ok=True)
                if method == "ties":
                    folders = [folder for folder, _ in sources]
                    await asyncio.to_thread(write_ties, folders, out, self.density)
                else:
                    await asyncio.to_thread(write_sum, sources, out)
            adapter = LoRAAdapter(
                f"composed:{key}",
                COMPOSED_ID_BASE + int(key[:8], 16),
                out,
                rank,
                parts=sources if in_memory else (),
            )
            await self.engine.add_adapter(adapter)
            log.info(
                "composed %s by %s (%s) as %s, rank %d%s",
                [lora_id for lora_id, _ in recipe],
                method,
                detail,
                adapter.name,
                rank,
                " in the engine" if in_memory else "",
            )
            self._loaded[key] = adapter
            while len(self._loaded) > self.keep:
                _, old = self._loaded.popitem(last=False)
                await self.engine.remove_adapter(old.name)
            return adapter
