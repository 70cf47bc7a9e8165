"""The vLLM engine: AsyncLLM with LoRA, every request carrying its own adapter.

vLLM batches requests for different adapters together by itself (up to `max_loras` adapters in a
batch, `max_cpu_loras` kept in memory). What this module adds, from traps measured on vLLM 0.32:
- A request without a LoRA batched with LoRA requests gets the last adapter's delta on CPU
  (upstream #48421/#49656). While any adapter is loaded, base requests therefore run through a
  zero adapter (every B matrix zero), which adds nothing and keeps every row on the LoRA path.
- A bad LoRARequest given to `generate()` kills the engine, while `add_lora()` of it fails cleanly:
  adapters are added with `add_lora()` first, and `generate()` only ever sees loaded ones.
- `add_lora()` on an id already loaded keeps the old weights: every version has its own id (the
  registry's row id), so a new version never reuses one.
- A replaced adapter is removed only when no request in flight uses it.
- `pin_lora()` takes a batch slot that the scheduler still hands out: a batch with `max_loras`
  other adapters then fails with a KeyError that kills the engine. Nothing is pinned; the zero
  adapter gets a slot of its own instead (`max_loras + 1`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from loramem.core.adapter_store import ALLOWED_TARGETS, CONFIG_FILE, WEIGHTS_FILE
from loramem.serving.engines.base import (
    AdapterLoadError,
    Engine,
    EngineError,
    GenerationOutput,
    LoRAAdapter,
    SamplingParams,
)

log = logging.getLogger("loramem.engine")

# LoRA ids of real adapters are registry row ids; this one is out of their way.
ZERO_ADAPTER_ID = 2**31 - 1
ZERO_ADAPTER_NAME = "__base__"


def write_zero_adapter(model_path: Path, folder: Path) -> Path:
    """A rank-1 LoRA on every projection of a Llama-style model, with all B matrices zero."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((model_path / "config.json").read_text())
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    kv = config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim
    queries = config["num_attention_heads"] * head_dim
    inner = config["intermediate_size"]
    shapes = {  # module: (in_features, out_features)
        "self_attn.q_proj": (hidden, queries),
        "self_attn.k_proj": (hidden, kv),
        "self_attn.v_proj": (hidden, kv),
        "self_attn.o_proj": (queries, hidden),
        "mlp.gate_proj": (hidden, inner),
        "mlp.up_proj": (hidden, inner),
        "mlp.down_proj": (inner, hidden),
    }
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module, (fan_in, fan_out) in shapes.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.zeros(1, fan_in)
            tensors[f"{prefix}.lora_B.weight"] = torch.zeros(fan_out, 1)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_FILE))
    adapter_config = {
        "peft_type": "LORA",
        "r": 1,
        "lora_alpha": 1,
        "target_modules": sorted(ALLOWED_TARGETS),
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }
    (folder / CONFIG_FILE).write_text(json.dumps(adapter_config))
    return folder


class VLLMEngine(Engine):
    kind = "vllm"

    def __init__(
        self,
        model_path: Path,
        *,
        max_loras: int = 8,
        max_cpu_loras: int = 32,
        max_lora_rank: int = 64,
        max_model_len: int = 4096,
        max_num_seqs: int = 64,
        kv_cache_space_gb: int = 1,
    ) -> None:
        self.model_path = model_path
        self.max_loras = max_loras
        self.max_cpu_loras = max_cpu_loras
        self.max_lora_rank = max_lora_rank
        positions = json.loads((model_path / "config.json").read_text())["max_position_embeddings"]
        self._max_model_len = min(max_model_len, positions)
        self.max_num_seqs = max_num_seqs
        self.kv_cache_space_gb = kv_cache_space_gb
        self._engine: Any = None
        self._tokenizer: Any = None
        self._loaded: dict[str, Any] = {}  # adapter name -> LoRARequest
        self._in_flight: Counter[str] = Counter()
        self._retired: set[str] = set()
        self._pinned: set[str] = set()
        self._zero: Any = None
        self._zero_dir: tempfile.TemporaryDirectory[str] | None = None
        self._lock = asyncio.Lock()

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineError("engine not started")
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    async def start(self) -> None:
        import torch
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.monotonic()
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_space_gb))
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        args = AsyncEngineArgs(
            model=str(self.model_path),
            tokenizer=str(self.model_path),
            dtype="auto" if on_gpu else "float32",
            enable_lora=True,
            max_loras=self.max_loras + 1,  # the zero adapter's own slot
            max_cpu_loras=max(self.max_cpu_loras, self.max_loras + 1),
            max_lora_rank=_supported_rank(self.max_lora_rank),
            max_model_len=self._max_model_len,
            max_num_seqs=self.max_num_seqs,
            seed=0,
            disable_log_stats=True,
        )
        self._engine = AsyncLLM.from_engine_args(args)
        self._zero_dir = tempfile.TemporaryDirectory(prefix="loramem-zero-lora-")
        zero_path = write_zero_adapter(self.model_path, Path(self._zero_dir.name))
        self._zero = LoRARequest(ZERO_ADAPTER_NAME, ZERO_ADAPTER_ID, str(zero_path))
        if not await self._engine.add_lora(self._zero):
            raise EngineError("the zero adapter could not be loaded")
        log.info("vllm engine ready in %.1fs", time.monotonic() - started)

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
        if self._zero_dir is not None:
            self._zero_dir.cleanup()

    def resident_adapters(self) -> list[str]:
        return list(self._loaded)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "max_loras": self.max_loras,
            "max_cpu_loras": self.max_cpu_loras,
            "max_lora_rank": self.max_lora_rank,
            "max_model_len": self._max_model_len,
            "pinned": sorted(self._pinned),
        }

    async def add_adapter(self, adapter: LoRAAdapter) -> None:
        from vllm.lora.request import LoRARequest

        async with self._lock:
            self._retired.discard(adapter.name)
            if adapter.name in self._loaded:
                return
            request = LoRARequest(adapter.name, adapter.lora_id, str(adapter.path))
            started = time.monotonic()
            try:
                loaded = await self._engine.add_lora(request)
            except Exception as error:
                raise AdapterLoadError(f"adapter {adapter.name} could not be loaded") from error
            if not loaded:
                raise AdapterLoadError(f"adapter {adapter.name} could not be loaded")
            if adapter.pinned:
                # Not pin_lora() (see above): never removed by us, and vLLM reloads it from its
                # verified folder should its own cache evict it.
                self._pinned.add(adapter.name)
            self._loaded[adapter.name] = request
            log.info(
                "adapter %s loaded lora_id=%d rank=%d in %.0fms resident=%d",
                adapter.name,
                adapter.lora_id,
                adapter.rank,
                (time.monotonic() - started) * 1000,
                len(self._loaded),
            )

    async def remove_adapter(self, name: str) -> None:
        async with self._lock:
            self._retired.add(name)
            await self._remove_retired()

    async def _remove_retired(self) -> None:
        for name in [n for n in self._retired if not self._in_flight[n]]:
            self._retired.discard(name)
            request = self._loaded.pop(name, None)
            if request is not None:
                await self._engine.remove_lora(request.lora_int_id)
                self._pinned.discard(name)
                log.info("adapter %s unloaded resident=%d", name, len(self._loaded))

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        adapter: LoRAAdapter | None = None,
    ) -> AsyncGenerator[GenerationOutput]:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        if self._engine is None:
            raise EngineError("engine is not running")
        if adapter is not None:
            await self.add_adapter(adapter)  # no-op when loaded; generate() must never load
            lora = self._loaded[adapter.name]
        else:
            lora = self._zero if self._loaded else None
        name = adapter.name if adapter else ZERO_ADAPTER_NAME
        sampling = VLLMSamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
            ignore_eos=params.ignore_eos,
            logprobs=0 if params.logprobs else None,  # 0: the sampled tokens' only
        )
        self._in_flight[name] += 1
        finished = False
        try:
            async for output in self._engine.generate(
                TokensPrompt(prompt_token_ids=list(prompt_token_ids)),
                sampling,
                request_id,
                lora_request=lora,
            ):
                completion = output.outputs[0]
                finished = output.finished
                yield GenerationOutput(
                    request_id=request_id,
                    text=completion.text,
                    token_ids=list(completion.token_ids),
                    prompt_tokens=len(prompt_token_ids),
                    finished=finished,
                    finish_reason=_finish_reason(completion.finish_reason) if finished else None,
                    logprob=completion.cumulative_logprob if params.logprobs else None,
                )
        except EngineError:
            raise
        except Exception as error:  # e.g. vLLM's EngineDeadError
            raise EngineError(f"generation failed: {type(error).__name__}") from error
        finally:
            if not finished and self._engine is not None:
                await self._engine.abort(request_id)
            self._in_flight[name] -= 1
            if self._retired:
                async with self._lock:
                    await self._remove_retired()


# The ranks vLLM 0.32 accepts as max_lora_rank.
_VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _supported_rank(rank: int) -> Any:
    """The smallest rank vLLM accepts that holds `rank`."""
    return next(r for r in _VLLM_RANKS if r >= rank)


def _finish_reason(reason: str | None) -> str | None:
    return "abort" if reason == "abort" else reason
