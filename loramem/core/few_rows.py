"""Linear layers that multiply a few rows of fp32 on the CPU as `weight @ xᵀ`.

Decoding multiplies each weight by as many rows as the batch has sequences. `F.linear`'s fp32
GEMM (`x @ weightᵀ`) takes a slow path for a few rows on the CPU: on the default model, the
49,152 x 576 vocabulary projection took 10, 22 and 32 ms for 1, 2 and 3 rows, and 4 ms for 3 rows
as `weight @ xᵀ`; a whole decoding step of 3 rows took 109 ms against 55 ms for one row, and 51 ms
as `weight @ xᵀ` (`bench.decode_rows`). One row is left to `F.linear` (its matrix-vector product
is as fast either way), as are bf16 (its kernels do not have the slow path), training (autograd
and autocast take the stock path) and more rows, such as a prompt's prefill.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["MAX_ROWS", "FewRowsLinear", "use_few_rows_linear"]

# Decoding steps of 2 to 8 rows took 0.47-0.96 of the stock time; of 12 to 32 rows, 0.97-1.19.
MAX_ROWS = 8


class FewRowsLinear(nn.Linear):
    """An `nn.Linear` (the same parameters and hooks) whose no-grad fp32 CPU forward of 2 to
    `MAX_ROWS` rows is `weight @ xᵀ`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = input.numel() // self.in_features
        if (
            1 < rows <= MAX_ROWS
            and input.dtype == self.weight.dtype == torch.float32
            and input.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
        ):
            # A transposed view: the layers that follow reshape it without a copy.
            output = torch.matmul(self.weight, input.reshape(rows, self.in_features).T).T
            if self.bias is not None:
                output = output + self.bias
            return output.reshape(*input.shape[:-1], self.out_features)
        return super().forward(input)


def use_few_rows_linear(model: Any) -> None:
    """Makes every plain `nn.Linear` of `model` a `FewRowsLinear`, in place (the same tensors)."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FewRowsLinear
