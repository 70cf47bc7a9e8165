"""LoRA dropout whose masks cost a fraction of torch's to draw.

On a CPU, torch's dropout draws one Bernoulli sample per element from its Mersenne Twister, about
6 ns each: with LoRA dropout on the input of every adapted layer (texts train with 0.1), a step of
8 text rows of 100 tokens spent 0.79 s of its 4.2 s drawing masks (630 of them, 210 for each of
its 3 micro-batches; torch's profiler, 2 cores with bf16 instructions). Here one 64-bit draw
gives seven one-byte samples, and an element is dropped where its byte is below round(p * 256):
the rate is p to the nearest 1/256 (0.1 drops 26 in 256, 0.1016) and what is kept is scaled by
the inverse of that rate's complement, so the expected input is the input, as with torch's. The
mask is kept for the backward pass as a bool tensor, as torch's dropout keeps it, and applied
with torch's own dropout kernel.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from peft.tuners.lora import LoraLayer

__all__ = ["ByteMaskDropout", "use_byte_mask_dropout"]

_LEVELS = 256
# The 7 bytes of a non-negative int64 draw that are uniform: all but the most significant.
_UNIFORM_BYTES = slice(0, 7) if sys.byteorder == "little" else slice(1, 8)


class _Masked(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, keep, scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None, None


def _uniform_bytes(count: int, device: torch.device) -> torch.Tensor:
    draws = -(-count // 7)
    words = torch.empty(draws, dtype=torch.int64, device=device).random_()
    return words.view(torch.uint8).view(draws, 8)[:, _UNIFORM_BYTES].reshape(-1)[:count]


class ByteMaskDropout(torch.nn.Module):
    """Dropout at rate `p` rounded to a multiple of 1/256; the identity when not training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.dropped_below = min(_LEVELS - 1, round(p * _LEVELS))
        self.p = self.dropped_below / _LEVELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropped_below == 0:
            return x
        keep = _uniform_bytes(x.numel(), x.device).view(x.shape) >= self.dropped_below
        return _Masked.apply(x, keep, 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


def use_byte_mask_dropout(model: Any) -> None:
    """Replaces the torch dropout of every LoRA layer of `model` with `ByteMaskDropout` at the
    same rate (to 1/256)."""
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name, dropout in module.lora_dropout.items():
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                module.lora_dropout[name] = ByteMaskDropout(dropout.p)
