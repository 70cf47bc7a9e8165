"""Linear layers that multiply a few rows as weight @ xᵀ: the same numbers as nn.Linear."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from loramem.core.base_model import load_causal_lm
from loramem.core.decoding import DecodeRow, SamplingParams, decode_batch
from loramem.core.few_rows import MAX_ROWS, FewRowsLinear, use_few_rows_linear


@pytest.mark.parametrize("bias", [True, False])
def test_every_row_count_gives_what_nn_linear_gives(bias: bool) -> None:
    torch.manual_seed(0)
    stock = nn.Linear(48, 80, bias=bias)
    few = nn.Linear(48, 80, bias=bias)
    few.load_state_dict(stock.state_dict())
    use_few_rows_linear(few)
    assert type(few) is FewRowsLinear
    with torch.inference_mode():
        for rows in range(1, MAX_ROWS + 3):
            for shape in ((rows, 48), (1, rows, 48)):
                x = torch.randn(shape)
                out = few(x)
                assert out.shape == (*shape[:-1], 80)
                torch.testing.assert_close(out, stock(x), rtol=1e-5, atol=1e-5)
                # Only 2 to MAX_ROWS rows take the transposed product (a view, not contiguous).
                assert out.is_contiguous() == (not 1 < rows <= MAX_ROWS)
                # What attention does with a projection: a view of heads.
                assert out.reshape(*shape[:-1], 8, 10).shape[-1] == 10


def test_training_takes_the_stock_path_and_hooks_still_run() -> None:
    layer = nn.Linear(16, 8)
    calls: list[int] = []
    layer.register_forward_hook(lambda _m, _a, out: calls.append(out.shape[0]))
    use_few_rows_linear(layer)
    x = torch.randn(3, 16, requires_grad=True)
    out = layer(x)
    assert out.is_contiguous()  # F.linear's own output, not the transposed view
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    with torch.no_grad():
        assert not layer(x).is_contiguous()  # the transposed product
    assert calls == [3, 3]


def test_a_loaded_model_decodes_batches_as_it_decodes_each_row(tiny_model_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is FewRowsLinear for m in linears)
    prompts = [
        tokenizer(f"the {word} of Zorblax is")["input_ids"] for word in ("pet", "ship", "map")
    ]

    def rows() -> list[DecodeRow]:
        return [DecodeRow(p, SamplingParams(max_tokens=6, ignore_eos=True)) for p in prompts]

    alone = rows()
    for row in alone:
        decode_batch(model, tokenizer, [row])
    together = rows()
    decode_batch(model, tokenizer, together)
    assert [r.generated for r in together] == [r.generated for r in alone]
