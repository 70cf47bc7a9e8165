"""The HF transformers engine: fp32 on CPU, several LoRA adapters resident, mixed batches.

One engine thread owns the model. Requests from concurrent HTTP calls queue up; the thread takes up
to `max_batch_size` of them into one batch in which every row names its own adapter (applied by
the `LoRABank`, two matmuls per layer for any mix), decodes until every row stops, then takes the
next batch. Adapter loads and
unloads run on the same thread between batches, so a version swap never touches a batch in flight.
Resident adapters are bounded (least recently used evicted first); a request whose adapter was
evicted loads it again on demand.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from server.base_model import load_causal_lm
from server.engines.base import (
    AdapterLoadError,
    Engine,
    EngineError,
    GenerationOutput,
    LoRAAdapter,
    SamplingParams,
)
from server.engines.decoding import DecodeRow, decode_batch
from server.engines.lora_bank import LoRABank

log = logging.getLogger("loramem.engine")


@dataclass(eq=False)
class _Request:
    id: str
    prompt_ids: Sequence[int]
    params: SamplingParams
    adapter: LoRAAdapter | None
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue[GenerationOutput | BaseException] = field(default_factory=asyncio.Queue)
    aborted: bool = False

    def emit(self, item: GenerationOutput | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)
        except RuntimeError:  # the caller's event loop is gone: nobody is waiting any more
            self.aborted = True

    def output(self, row: DecodeRow | None, *, finished: bool) -> GenerationOutput:
        return GenerationOutput(
            request_id=self.id,
            text=row.text if row else "",
            token_ids=list(row.generated) if row else [],
            prompt_tokens=len(self.prompt_ids),
            finished=finished,
            finish_reason=(row.finish_reason if row else "abort") if finished else None,
        )


class HFEngine(Engine):
    kind = "hf"

    def __init__(
        self,
        model_path: Path,
        *,
        max_batch_size: int = 16,
        max_resident_adapters: int = 8,
        batch_wait_seconds: float = 0.005,
    ) -> None:
        self.model_path = model_path
        self.max_batch_size = max_batch_size
        self.max_resident_adapters = max_resident_adapters
        self.batch_wait_seconds = batch_wait_seconds
        self._model: PreTrainedModel | None = None
        self._bank: LoRABank | None = None
        self._tokenizer: Any = None
        self._resident: OrderedDict[str, LoRAAdapter] = OrderedDict()
        # Removed by the caller: unloaded as soon as no queued request wants it, and again after
        # any request that still named it (planned before the swap) loaded it back.
        self._retired: set[str] = set()
        self._pending: deque[_Request] = deque()
        self._serving: list[_Request] = []
        self._commands: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # Counters for operators and tests: batches decoded, requests served, adapter loads.
        self.stats = {
            "batches": 0,
            "requests": 0,
            "aborted": 0,
            "adapter_loads": 0,
            "adapter_evictions": 0,
        }

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineError("engine not started")
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        if self._model is None:
            raise EngineError("engine not started")
        return int(self._model.config.max_position_embeddings)

    async def start(self) -> None:
        started = time.monotonic()
        model, self._tokenizer = await asyncio.to_thread(load_causal_lm, self.model_path)
        self._model, self._bank = model, LoRABank(model)
        self._thread = threading.Thread(target=self._run, name="hf-engine", daemon=True)
        self._thread.start()
        log.info("hf engine ready in %.1fs", time.monotonic() - started)

    async def shutdown(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def resident_adapters(self) -> list[str]:
        return list(self._resident)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "max_resident_adapters": self.max_resident_adapters,
            "max_batch_size": self.max_batch_size,
            "stats": dict(self.stats),
        }

    async def add_adapter(self, adapter: LoRAAdapter) -> None:
        def add() -> None:
            self._retired.discard(adapter.name)  # e.g. a rollback to an older version
            self._ensure_resident(adapter, pinned=set())

        await self._call(add)

    async def remove_adapter(self, name: str) -> None:
        def retire() -> None:
            self._retired.add(name)
            self._unload_retired()

        await self._call(retire)

    async def abort(self, request_id: str) -> None:
        with self._wakeup:
            for request in [*self._pending, *self._serving]:
                if request.id == request_id:
                    request.aborted = True

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        adapter: LoRAAdapter | None = None,
    ) -> AsyncIterator[GenerationOutput]:
        request = _Request(
            request_id, list(prompt_token_ids), params, adapter, asyncio.get_running_loop()
        )
        with self._wakeup:
            if self._stopping or self._thread is None:
                raise EngineError("engine is not running")
            self._pending.append(request)
            self._wakeup.notify()
        finished = False
        try:
            while not finished:
                item = await request.outputs.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:  # the caller went away: free the batch slot
                request.aborted = True

    async def _call(self, command: Callable[[], Any]) -> Any:
        future: Future[Any] = Future()
        with self._wakeup:
            self._commands.append((command, future))
            self._wakeup.notify()
        return await asyncio.wrap_future(future)

    # --- engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not (self._pending or self._commands or self._stopping):
                    self._wakeup.wait()
                if self._stopping:
                    break
            if self._pending and not self._commands:
                time.sleep(self.batch_wait_seconds)  # let concurrent arrivals join this batch
            with self._wakeup:
                commands = list(self._commands)
                self._commands.clear()
                batch = self._take_batch()
                self._serving = batch
            for command, future in commands:
                if not future.set_running_or_notify_cancel():
                    continue  # its caller was cancelled (a request gone, a shutdown)
                try:
                    future.set_result(command())
                except BaseException as error:
                    future.set_exception(error)
            if batch:
                self._serve(batch)
            with self._wakeup:
                self._serving = []
            self._unload_retired()
        with self._wakeup:
            for request in self._pending:
                request.emit(EngineError("engine shut down"))
            self._pending.clear()
            for _, future in self._commands:
                future.set_exception(EngineError("engine shut down"))
            self._commands.clear()

    def _take_batch(self) -> list[_Request]:
        """Oldest first, bounded by batch size and by how many adapters may be resident at once."""
        batch: list[_Request] = []
        adapters: set[str] = set()
        deferred: deque[_Request] = deque()
        while self._pending and len(batch) < self.max_batch_size:
            request = self._pending.popleft()
            if request.aborted:
                self.stats["aborted"] += 1
                request.emit(request.output(None, finished=True))
                continue
            name = request.adapter.name if request.adapter else None
            if name and name not in adapters and len(adapters) >= self.max_resident_adapters:
                deferred.append(request)
                continue
            if name:
                adapters.add(name)
            batch.append(request)
        self._pending.extendleft(reversed(deferred))
        return batch

    def _serve(self, batch: list[_Request]) -> None:
        pinned = {r.adapter.name for r in batch if r.adapter}
        ready: list[_Request] = []
        for request in batch:
            try:
                if request.adapter:
                    self._ensure_resident(request.adapter, pinned)
                ready.append(request)
            except AdapterLoadError as error:
                request.emit(error)
        rows = [
            DecodeRow(r.prompt_ids, r.params, r.adapter.name if r.adapter else None) for r in ready
        ]

        def on_step(moved: list[int]) -> set[int]:
            for index in moved:
                if rows[index].finish_reason is None:
                    ready[index].emit(ready[index].output(rows[index], finished=False))
            return {index for index, request in enumerate(ready) if request.aborted}

        assert self._model is not None and self._bank is not None
        self.stats["batches"] += 1
        self.stats["requests"] += len(ready)
        try:
            decode_batch(
                self._model,
                self._tokenizer,
                rows,
                select_adapters=self._bank.select,
                on_step=on_step,
            )
        except Exception as error:
            log.exception("batch of %d failed", len(ready))
            for request in ready:
                request.emit(EngineError(f"generation failed: {type(error).__name__}"))
            return
        for request, row in zip(ready, rows, strict=True):
            self.stats["aborted"] += row.finish_reason == "abort"
            request.emit(request.output(row, finished=True))

    def _ensure_resident(self, adapter: LoRAAdapter, pinned: set[str]) -> None:
        if adapter.name in self._resident:
            self._resident.move_to_end(adapter.name)
            return
        while len(self._resident) >= self.max_resident_adapters:
            victim = next(
                (
                    name
                    for name, resident in self._resident.items()
                    if name not in pinned and not resident.pinned
                ),
                None,
            )
            if victim is None:
                break
            self._unload(victim, reason="evicted")
            self.stats["adapter_evictions"] += 1
        started = time.monotonic()
        assert self._bank is not None
        try:
            self._bank.add(adapter.name, adapter.path)
        except Exception as error:
            log.warning("adapter %s failed to load: %s", adapter.name, error)
            raise AdapterLoadError(f"adapter {adapter.name} could not be loaded") from error
        self._resident[adapter.name] = adapter
        self.stats["adapter_loads"] += 1
        log.info(
            "adapter %s loaded lora_id=%d rank=%d in %.0fms resident=%d",
            adapter.name,
            adapter.lora_id,
            adapter.rank,
            (time.monotonic() - started) * 1000,
            len(self._resident),
        )

    def _unload_retired(self) -> None:
        with self._wakeup:
            wanted = {r.adapter.name for r in self._pending if r.adapter and not r.aborted}
        for name in (self._retired & self._resident.keys()) - wanted:
            self._unload(name)

    def _unload(self, name: str, reason: str = "unloaded") -> None:
        if name not in self._resident:
            return
        del self._resident[name]
        assert self._bank is not None
        self._bank.remove(name)
        log.info("adapter %s %s resident=%d", name, reason, len(self._resident))
