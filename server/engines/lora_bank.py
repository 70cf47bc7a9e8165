"""Many LoRA adapters applied row by row inside one batch, at nearly the cost of one.

PEFT's mixed batches (`adapter_names`) run every adapter's rows as a separate sub-batch in every
layer: DESIGN.md measured 4 mixed adapters at 0.64 of one. Here, when a batch starts, each adapted
layer gets its rows' matrices stacked (`A [rows, in, r]`, `B [rows, r, out]`, alpha/r folded into
B, zeros for base rows), so the update is two batched matmuls per layer whatever the mix. Rows
that finish leave the stacks by indexing; nothing is gathered again. A batch with one adapter for
every row uses plain matmuls, and a batch with none adds nothing.

The base model is never modified: the update is added by a forward hook on each adapted Linear,
so an adapter that fails validation is simply not added, and removing one frees its tensors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from server.adapter_store import CONFIG_FILE, WEIGHTS_FILE

log = logging.getLogger("loramem.engine")

# PEFT prefixes every saved key with this and names the matrices `<module>.lora_A.weight`.
KEY_PREFIX = "base_model.model."
# Adapter features this bank does not implement: such an adapter is refused, not served wrong.
UNSUPPORTED = ("use_dora", "fan_in_fan_out", "modules_to_save", "rank_pattern", "alpha_pattern")


class UnsupportedAdapter(ValueError):
    """The files are not a plain LoRA over this model's Linear layers."""


def lora_scaling(config: dict[str, Any]) -> float:
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha") or rank)
    return alpha / (rank**0.5 if config.get("use_rslora") else rank)


@dataclass(frozen=True)
class BankedAdapter:
    rank: int
    # module name -> (A [rank, in], B·scaling [out, rank])
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_adapter(path: Path, linears: dict[str, nn.Linear]) -> BankedAdapter:
    """Reads and checks a PEFT LoRA folder against the model's Linear layers."""
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise UnsupportedAdapter(f"peft_type {config.get('peft_type')}")
    for feature in UNSUPPORTED:
        if config.get(feature):
            raise UnsupportedAdapter(feature)
    if config.get("bias", "none") != "none":
        raise UnsupportedAdapter("bias")
    rank, scaling = int(config["r"]), lora_scaling(config)
    state = load_file(path / WEIGHTS_FILE)
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key_a in (key for key in state if key.endswith(".lora_A.weight")):
        module = key_a.removeprefix(KEY_PREFIX).removesuffix(".lora_A.weight")
        key_b = key_a.replace(".lora_A.", ".lora_B.")
        linear = linears.get(module)
        if linear is None or key_b not in state:
            raise UnsupportedAdapter(f"no Linear layer {module!r} to adapt")
        a, b = state[key_a].float(), state[key_b].float()
        if a.shape != (rank, linear.in_features) or b.shape != (linear.out_features, rank):
            raise UnsupportedAdapter(f"shapes of {module!r} do not fit the model")
        weights[module] = (a.contiguous(), (b * scaling).contiguous())
    if len(weights) * 2 != len(state):
        raise UnsupportedAdapter("weights other than LoRA A/B pairs")
    if not weights:
        raise UnsupportedAdapter("no LoRA weights")
    return BankedAdapter(rank, weights)


class LoRABank:
    """The resident adapters of one model, applied per row of whatever batch runs next."""

    def __init__(self, model: nn.Module) -> None:
        self._linears = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not name.endswith("lm_head")
        }
        self._adapters: dict[str, BankedAdapter] = {}
        self._rows: tuple[str | None, ...] = ()
        # What the next forward passes add, per module: nothing (absent), one adapter's (A, B)
        # for all rows, or the rows' own (A [rows, in, r], B [rows, r, out]) for a batched matmul.
        self._updates: dict[str, tuple[bool, torch.Tensor, torch.Tensor]] = {}
        self._hooks = [
            module.register_forward_hook(self._hook(name)) for name, module in self._linears.items()
        ]

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    def add(self, name: str, path: Path) -> int:
        """Loads an adapter, returns its rank; refuses all but a plain LoRA for this model."""
        adapter = read_adapter(path, self._linears)
        self.remove(name)
        self._adapters[name] = adapter
        return adapter.rank

    def remove(self, name: str) -> None:
        self._adapters.pop(name, None)
        if name in self._rows:  # the next batch gathers afresh
            self._rows, self._updates = (), {}

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def select(self, row_adapters: list[str | None]) -> None:
        """Sets the adapter of each row for the forward passes that follow (None: the base)."""
        rows = tuple(row_adapters)
        if rows == self._rows:
            return
        kept = _kept_rows(self._rows, rows)
        names = {name for name in rows if name is not None}
        if not names:
            self._updates = {}
        elif len(names) == 1 and None not in rows:
            [name] = names
            self._updates = {
                module: (False, a, b) for module, (a, b) in self._adapters[name].weights.items()
            }
        elif kept is not None and all(per_row for per_row, _, _ in self._updates.values()):
            # Rows that finished leave the batch: keep the others' matrices, gather nothing anew.
            index = torch.tensor(kept)
            self._updates = {
                module: (True, a[index], b[index]) for module, (_, a, b) in self._updates.items()
            }
        else:
            self._updates = self._gather_rows(rows)
        self._rows = rows

    def _gather_rows(
        self, rows: tuple[str | None, ...]
    ) -> dict[str, tuple[bool, torch.Tensor, torch.Tensor]]:
        """Stacks each row's matrices (zeros for base rows, padded to the batch's largest rank)."""
        rank = max(self._adapters[name].rank for name in rows if name is not None)
        updates = {}
        for module, linear in self._linears.items():
            per_row = [self._adapters[name].weights.get(module) if name else None for name in rows]
            if all(weights is None for weights in per_row):
                continue
            a_rows = torch.zeros(len(rows), linear.in_features, rank)
            b_rows = torch.zeros(len(rows), rank, linear.out_features)
            for row, weights in enumerate(per_row):
                if weights is not None:
                    a, b = weights
                    a_rows[row, :, : a.shape[0]] = a.T
                    b_rows[row, : b.shape[1]] = b.T
            updates[module] = (True, a_rows, b_rows)
        return updates

    def _hook(self, module: str) -> Any:
        def add_update(_: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> Any:
            update = self._updates.get(module)
            if update is None:
                return None
            per_row, a, b = update
            if per_row:
                return output + torch.bmm(torch.bmm(args[0], a), b)
            return output + nn.functional.linear(nn.functional.linear(args[0], a), b)

        return add_update


def _kept_rows(before: tuple[str | None, ...], after: tuple[str | None, ...]) -> list[int] | None:
    """Indices of `before` that `after` keeps, in order, if `after` is `before` less some rows.

    Rows with the same adapter have the same matrices, so matching names in order is enough.
    """
    kept, position = [], 0
    for name in after:
        while position < len(before) and before[position] != name:
            position += 1
        if position == len(before):
            return None
        kept.append(position)
        position += 1
    return kept
