"""The engine interface: what the server needs from an inference engine.

It follows vLLM's AsyncLLM so that both implementations fit it: every request names its own LoRA
adapter (or none), `generate` yields cumulative outputs as they are produced (streaming), and a
request can be aborted by id. Adapters reach an engine only after
`loramem.core.adapter_store.verify`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loramem.core.decoding import SamplingParams


@dataclass(frozen=True)
class LoRAAdapter:
    """A verified adapter: `name` is unique per version, `lora_id` is vLLM's int id for it.

    A pinned adapter is never evicted to make room for others (hot topics). A composition of
    modules names its parts (their folders and weights): an engine that `sums_adapters` applies
    their sum from them, any other reads the summed adapter written at `path`.
    """

    name: str
    lora_id: int
    path: Path
    rank: int
    pinned: bool = False
    parts: tuple[tuple[Path, float], ...] = ()

    @property
    def sources(self) -> tuple[tuple[Path, float], ...]:
        """The folders whose weighted sum this adapter is (itself alone, for a plain one)."""
        return self.parts or ((self.path, 1.0),)


@dataclass
class GenerationOutput:
    """Everything generated so far for one request (cumulative, like vLLM's RequestOutput)."""

    request_id: str
    text: str
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    finished: bool = False
    finish_reason: str | None = None
    # With SamplingParams.logprobs: the sum of the generated tokens' log-probabilities under
    # the model and its adapter, at temperature 1 (how sure the model was of this answer).
    logprob: float | None = None


class EngineError(RuntimeError):
    pass


class AdapterLoadError(EngineError):
    pass


class Engine(abc.ABC):
    kind: str
    # Whether a composition is applied from its parts (True) or needs its summed file (False).
    sums_adapters: bool = False

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """The base model's tokenizer: the server formats prompts with it."""

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int:
        """Prompt plus generated tokens may not exceed this."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def shutdown(self) -> None: ...

    @abc.abstractmethod
    async def add_adapter(self, adapter: LoRAAdapter) -> None:
        """Makes the adapter resident; raises AdapterLoadError and stays healthy on failure."""

    @abc.abstractmethod
    async def remove_adapter(self, name: str) -> None:
        """Unloads the adapter once no request in flight uses it."""

    @abc.abstractmethod
    def resident_adapters(self) -> list[str]: ...

    @abc.abstractmethod
    def generate(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        adapter: LoRAAdapter | None = None,
    ) -> AsyncGenerator[GenerationOutput]:
        """Yields cumulative outputs; the last one has `finished=True`."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"engine": self.kind, "adapters": self.resident_adapters()}

    def base_model(self) -> Any | None:
        """The base model as a torch module whose frozen weights a trainer in the same process
        may share (see `base_model.load_causal_lm`); None where the engine holds none."""
        return None
