"""Many LoRA adapters applied row by row inside one batch, at nearly the cost of one.

PEFT's mixed batches (`adapter_names`) run every adapter's rows as a separate sub-batch in every
layer: 4 mixed adapters measured 0.64 of one (ARCHITECTURE.md). Here, when a batch starts,
each adapted layer gets its rows' matrices stacked (`A [rows, in, r]`, `B [rows, r, out]`,
alpha/r folded into B, zeros for base rows), so the update is two batched matmuls per layer
whatever the mix. Rows that finish leave the stacks by indexing and rows that join are
appended: only their matrices are gathered. A batch with one adapter for every row uses plain
matmuls, and one with none adds nothing. A composition of modules is one more entry: their
updates summed, built from their folders (`lora_weights.summed_lora`), no merged file written.

The base model is never modified: the update is added by a forward hook on each adapted Linear,
so an adapter that fails validation is simply not added, and removing one frees its tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loramem.serving.lora_weights import read_lora, summed_lora

log = logging.getLogger("loramem.engine")

# PEFT prefixes every saved key with this and names the matrices `<module>.lora_A.weight`.
KEY_PREFIX = "base_model.model."
# Adapter features this bank does not implement: such an adapter is refused, not served wrong.
UNSUPPORTED = ("use_dora", "fan_in_fan_out", "modules_to_save", "rank_pattern", "alpha_pattern")


class UnsupportedAdapter(ValueError):
    """The files are not a plain LoRA over this model's Linear layers."""


@dataclass(frozen=True)
class BankedAdapter:
    rank: int
    # module name -> (Aᵀ [in, rank], (B·scaling)ᵀ [rank, out]): x @ Aᵀ @ Bᵀ is the update
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_adapter(
    parts: Sequence[tuple[Path, float]], linears: dict[str, nn.Linear]
) -> BankedAdapter:
    """Reads and checks PEFT LoRA folders against the model's Linear layers: one adapter (a
    single part of weight 1), or the weighted sum of several, applied as one of their ranks
    added up."""
    loaded = []
    for path, weight in parts:
        config, state = read_lora(path)
        _check_plain_lora(config, state)
        loaded.append((config, state, weight))
    config, state = summed_lora(loaded)
    rank = int(config["r"])
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key_a in (key for key in state if key.endswith(".lora_A.weight")):
        module = key_a.removeprefix(KEY_PREFIX).removesuffix(".lora_A.weight")
        linear = linears.get(module)
        if linear is None:
            raise UnsupportedAdapter(f"no Linear layer {module!r} to adapt")
        a = state[key_a].to(linear.weight)
        b = state[key_a.replace(".lora_A.", ".lora_B.")].to(linear.weight)
        if a.shape != (rank, linear.in_features) or b.shape != (linear.out_features, rank):
            raise UnsupportedAdapter(f"shapes of {module!r} do not fit the model")
        weights[module] = (a.T.contiguous(), b.T.contiguous())  # summed_lora folded the scaling
    if not weights:
        raise UnsupportedAdapter("no LoRA weights")
    return BankedAdapter(rank, weights)


def _check_plain_lora(config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise UnsupportedAdapter(f"peft_type {config.get('peft_type')}")
    for feature in UNSUPPORTED:
        if config.get(feature):
            raise UnsupportedAdapter(feature)
    if config.get("bias", "none") != "none":
        raise UnsupportedAdapter("bias")
    pairs = {key for key in state if key.endswith(".lora_A.weight")}
    if {key.replace(".lora_A.", ".lora_B.") for key in pairs} | pairs != set(state):
        raise UnsupportedAdapter("weights other than LoRA A/B pairs")


class LoRABank:
    """The resident adapters of one model, applied per row of whatever batch runs next."""

    def __init__(self, model: nn.Module) -> None:
        self._linears = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not name.endswith("lm_head")
        }
        self._adapters: dict[str, BankedAdapter] = {}
        self._device = next(model.parameters()).device
        self._rows: tuple[str | None, ...] = ()
        # What the next forward passes add, per module: nothing (absent), one adapter's (A, B)
        # for all rows, or the rows' own (A [rows, in, r], B [rows, r, out]) for a batched matmul.
        self._updates: dict[str, tuple[bool, torch.Tensor, torch.Tensor]] = {}
        # The last per-row stacks, with the rows they were stacked for.
        self._stacked: tuple[
            tuple[str | None, ...], dict[str, tuple[bool, torch.Tensor, torch.Tensor]]
        ] = ((), {})
        for name, module in self._linears.items():
            module.register_forward_hook(self._hook(name))

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    def add(self, name: str, parts: Sequence[tuple[Path, float]]) -> int:
        """Loads an adapter (or the weighted sum of several), returns its rank; refuses all but
        a plain LoRA for this model."""
        adapter = read_adapter(parts, self._linears)
        self.remove(name)
        self._adapters[name] = adapter
        return adapter.rank

    def remove(self, name: str) -> None:
        self._adapters.pop(name, None)
        if name in self._rows or name in self._stacked[0]:  # the next batch gathers afresh
            self._rows, self._updates, self._stacked = (), {}, ((), {})

    def select(self, row_adapters: list[str | None]) -> None:
        """Sets the adapter of each row for the forward passes that follow (None: the base)."""
        rows = tuple(row_adapters)
        if rows == self._rows:
            return
        names = {name for name in rows if name is not None}
        if not names:
            self._updates = {}
        elif len(names) == 1 and None not in rows:
            [name] = names
            self._updates = {
                module: (False, a, b) for module, (a, b) in self._adapters[name].weights.items()
            }
        else:
            self._updates = self._stack_rows(rows)
            self._stacked = (rows, self._updates)
        self._rows = rows

    def _stack_rows(
        self, rows: tuple[str | None, ...]
    ) -> dict[str, tuple[bool, torch.Tensor, torch.Tensor]]:
        """Each row's matrices stacked (zeros for base rows, padded to the largest rank).

        Rows of the last stacked batch are taken from it (rows that finished leave it, rows that
        join are appended): only joining rows are gathered, not the whole batch again.
        """
        before, stacked = self._stacked
        kept = _kept_prefix(before, rows)
        joining = rows[len(kept) :]
        rank = max(self._adapters[name].rank for name in rows if name is not None)
        if kept and any(a.shape[-1] != rank for _, a, _ in stacked.values()):
            kept = []
        index = torch.tensor(kept, dtype=torch.long, device=self._device)
        updates = {}
        for module, linear in self._linears.items():
            if not any(name and module in self._adapters[name].weights for name in rows):
                continue
            parts_a: list[torch.Tensor] = []
            parts_b: list[torch.Tensor] = []
            if kept:
                a_rows, b_rows = (
                    stacked[module][1:] if module in stacked else self._zeros(linear, rank, kept)
                )
                parts_a.append(a_rows[index])
                parts_b.append(b_rows[index])
            for name in joining:
                weights = self._adapters[name].weights.get(module) if name else None
                a, b = weights or self._zeros(linear, rank)
                if a.shape[-1] != rank:
                    a = nn.functional.pad(a, (0, rank - a.shape[-1]))
                    b = nn.functional.pad(b, (0, 0, 0, rank - b.shape[0]))
                parts_a.append(a.unsqueeze(0))
                parts_b.append(b.unsqueeze(0))
            updates[module] = (True, torch.cat(parts_a), torch.cat(parts_b))
        return updates

    @staticmethod
    def _zeros(
        linear: nn.Linear, rank: int, rows: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A base row's matrices (or, given `rows`, a stack as large as they index)."""
        batch = () if rows is None else (max(rows) + 1,)
        weight = linear.weight
        return (
            weight.new_zeros((*batch, linear.in_features, rank)),
            weight.new_zeros((*batch, rank, linear.out_features)),
        )

    def _hook(self, module: str) -> Any:
        def add_update(_: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> Any:
            update = self._updates.get(module)
            if update is None:
                return None
            per_row, a, b = update
            if per_row:
                return output + torch.bmm(torch.bmm(args[0], a), b)
            return output + torch.matmul(torch.matmul(args[0], a), b)

        return add_update


def _kept_prefix(before: tuple[str | None, ...], after: tuple[str | None, ...]) -> list[int]:
    """Indices into `before` of the longest start of `after` that `before` holds in order.

    Rows with the same adapter have the same matrices, so matching names in order is enough.
    """
    kept, position = [], 0
    for name in after:
        while position < len(before) and before[position] != name:
            position += 1
        if position == len(before):
            break
        kept.append(position)
        position += 1
    return kept
