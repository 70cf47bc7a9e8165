"""What a training step keeps for its backward pass, by precision: the calibration behind the
memory plan's bytes a token (`lora_trainer.ACTIVATION_BYTES`, `BF16_KEPT_SHARE`).

    .venv/bin/python -m bench.activation_bytes [--width 300]

One example of `--width` random tokens goes forward through the default model's decoder with
LoRA (rank 8, all linear layers, dropout 0.1, as a text's job trains) and back; every tensor that
autograd saves for the backward pass is counted once, the parameters (the frozen weights, and in
bf16 their copies cast once) left out. Three ways: fp32; bf16 autocast alone, which casts each
frozen weight at every use (those casts counted apart); and the trainer's bf16, the frozen
weights and the adapted layers' inputs cast once (`cast_once`). Prints the bytes a token, a
layer and a unit of width (hidden + intermediate size) and the ratio of each bf16 way to fp32.
Writes bench/results/activation_bytes.json.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import torch
from peft import get_peft_model

from bench.common import model_path, ratio, save
from loramem.core.base_model import load_causal_lm
from loramem.core.options import TEXT_DROPOUT, TrainingOptions
from loramem.trainer.lora_trainer import cast_once, lora_config

WAYS = {
    "fp32": (False, False),
    "bf16 autocast alone": (True, False),
    "bf16 cast once": (True, True),
}


def saved_bytes(model: Any, ids: torch.Tensor, autocast: bool, once: bool) -> dict[str, int]:
    """Bytes autograd saved for one forward and backward: activations, and casts of weights."""
    weight_shapes = {
        tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)
    }
    saved: dict[int, tuple[int, bool]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        cast = tensor.dtype == torch.bfloat16 and tuple(tensor.shape) in weight_shapes
        saved[storage.data_ptr()] = (storage.nbytes(), cast)
        return tensor

    computing = (
        torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    )
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        cast_once(model, torch.bfloat16 if once else None),
        computing,
    ):
        hidden = model.base_model.model.model(input_ids=ids).last_hidden_state
        parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        hidden.float().sum().backward()
    model.zero_grad(set_to_none=True)
    kept = [entry for ptr, entry in saved.items() if ptr not in parameters]
    return {
        "activations": sum(size for size, cast in kept if not cast),
        "weight_casts": sum(size for size, cast in kept if cast),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=300)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    base, _ = load_causal_lm(model_path())
    model = get_peft_model(base, lora_config(TrainingOptions(dropout=TEXT_DROPOUT)))
    model.train()
    config = base.config
    unit = args.width * config.num_hidden_layers * (config.hidden_size + config.intermediate_size)
    ids = torch.randint(100, 40_000, (1, args.width))
    results: dict[str, Any] = {}
    for name, (autocast, once) in WAYS.items():
        figures = saved_bytes(model, ids, autocast, once)
        figures["bytes_per_token_layer_width"] = figures["activations"] / unit
        results[name] = figures
        print(
            f"  {name}: activations {figures['activations'] / 2**20:.0f} MiB "
            f"({figures['bytes_per_token_layer_width']:.1f} bytes a token, layer and width), "
            f"weight casts {figures['weight_casts'] / 2**20:.0f} MiB",
            flush=True,
        )
    ratios = [
        ratio(
            f"activations {name}/fp32", results[name]["activations"], results["fp32"]["activations"]
        )
        for name in WAYS
        if name != "fp32"
    ]
    report = {"width": args.width, "results": results, "ratios": ratios}
    save("activation_bytes", report)
    return report


if __name__ == "__main__":
    main()
