"""The trainer's LoRA dropout: torch's in distribution, cheaper to draw."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loramem.core.base_model import load_causal_lm
from loramem.core.options import TrainingOptions
from loramem.trainer.dropout import ByteMaskDropout
from loramem.trainer.lora_trainer import train_lora
from loramem.trainer.training_data import Knowledge, build_training_set


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_drops_at_the_rate_and_keeps_the_expected_input(rate: float) -> None:
    torch.manual_seed(0)
    dropout = ByteMaskDropout(rate)
    assert abs(dropout.p - rate) <= 1 / 512
    x = torch.full((1000, 1000), 2.0)
    y = dropout(x)
    assert abs((y == 0).float().mean().item() - dropout.p) < 0.003
    assert abs(y.mean().item() - 2.0) < 0.01
    assert y.unique().tolist() == pytest.approx([0.0, 2.0 / (1 - dropout.p)])


def test_draws_a_new_mask_for_every_input_and_each_element_alike() -> None:
    torch.manual_seed(0)
    dropout = ByteMaskDropout(0.5)
    x = torch.ones(7 * 3000 + 3)  # elements from every byte of the draws, and a ragged end
    masks = torch.stack([dropout(x.clone()) == 0 for _ in range(200)]).float()
    assert not torch.equal(masks[0], masks[1])
    per_byte = masks[:, : 7 * 3000].view(200, 3000, 7).mean(dim=(0, 1))
    assert torch.all((per_byte - 0.5).abs() < 0.01), per_byte


def test_the_gradient_passes_where_the_input_was_kept() -> None:
    torch.manual_seed(0)
    dropout = ByteMaskDropout(0.25)
    x = torch.randn(64, 48, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x)
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    kept = y != 0
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept].float(), torch.tensor(1 / 0.75), rtol=1e-2)


def test_is_the_identity_out_of_training_or_at_rate_zero() -> None:
    x = torch.randn(10, 10)
    assert ByteMaskDropout(0.1).eval()(x) is x
    assert ByteMaskDropout(0.0)(x) is x


def test_texts_train_with_it_in_place_of_torchs(tiny_model_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    text = build_training_set(tokenizer, [Knowledge(text="Quiggle is a pet.")]).examples
    trained = train_lora(model, tokenizer.pad_token_id, text, TrainingOptions(steps=1))
    dropouts = [m for m in trained.modules() if isinstance(m, ByteMaskDropout)]
    assert dropouts and all(abs(d.p - 0.1) <= 1 / 512 for d in dropouts)
    assert not any(type(m) is torch.nn.Dropout for m in trained.modules())
