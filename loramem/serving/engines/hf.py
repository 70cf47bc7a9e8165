"""The HF transformers engine: fp32 on CPU, several LoRA adapters resident, continuous batching.

One engine thread owns the model and one running batch of up to `max_batch_size` rows, in which
every row names its own adapter (applied by the `LoRABank`, two matmuls per layer for any mix).
Between two decoding steps the thread runs adapter loads and unloads, lets finished rows leave
and lets queued requests join (prefilled, then merged into the batch's KV cache), so a request
never waits for a whole batch to end, and a new version is served from the next step. A version
swap never touches a row in flight: that row keeps the adapter it started with. Resident adapters
are bounded (least recently used evicted first, never one a running row uses); a request whose
adapter was evicted loads it again on demand.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from loramem.core.base_model import load_causal_lm
from loramem.core.decoding import DecodeRow, RunningBatch
from loramem.serving.engines.base import (
    AdapterLoadError,
    Engine,
    EngineError,
    GenerationOutput,
    LoRAAdapter,
    SamplingParams,
)
from loramem.serving.engines.lora_bank import LoRABank

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
            logprob=row.logprob if row and self.params.logprobs else None,
        )


class HFEngine(Engine):
    kind = "hf"
    sums_adapters = True

    def __init__(
        self,
        model_path: Path,
        *,
        max_batch_size: int = 16,
        max_resident_adapters: int = 8,
        batch_wait_seconds: float = 0.01,
        max_batch_wait_seconds: float = 0.2,
        device: str = "cpu",
        idle_seconds: float = 1.0,
        precision: str = "fp32",
    ) -> None:
        self.model_path = model_path
        self.precision = precision
        self.max_batch_size = max_batch_size
        self.max_resident_adapters = max_resident_adapters
        self.batch_wait_seconds = batch_wait_seconds
        self.max_batch_wait_seconds = max_batch_wait_seconds
        self.device = device
        # After this long without work the engine's thread ends, and its compute pool with it; the
        # next request starts another (core/compute_threads: a live idle pool slows the trainer's).
        self.idle_seconds = idle_seconds
        self._model: PreTrainedModel | None = None
        self._bank: LoRABank | None = None
        self._tokenizer: Any = None
        self._resident: OrderedDict[str, LoRAAdapter] = OrderedDict()
        # Removed by the caller: unloaded as soon as no queued request wants it, and again after
        # any request that still named it (planned before the swap) loaded it back.
        self._retired: set[str] = set()
        self._pending: deque[_Request] = deque()
        # Requests not yet finished, by id, for abort(); only the event loop touches it.
        self._live: dict[str, _Request] = {}
        # The requests of the running batch, by id() of their row.
        self._rows: dict[int, _Request] = {}
        self._batch: RunningBatch
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
        model, self._tokenizer = await asyncio.to_thread(
            load_causal_lm, self.model_path, self.device, None, self.precision
        )
        self._model, self._bank = model, LoRABank(model)
        self._batch = self._new_batch()
        log.info("hf engine ready in %.1fs", time.monotonic() - started)

    def base_model(self) -> Any | None:
        return self._model

    async def shutdown(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
            thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)

    def resident_adapters(self) -> list[str]:
        return list(self._resident)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            # What the loaded weights are, not what was asked for.
            "precision": "bf16"
            if self._model is not None and self._model.dtype == torch.bfloat16
            else "fp32",
            "max_resident_adapters": self.max_resident_adapters,
            "max_batch_size": self.max_batch_size,
            "stats": dict(self.stats),
        }

    async def add_adapter(self, adapter: LoRAAdapter) -> None:
        def add() -> None:
            self._retired.discard(adapter.name)  # e.g. a rollback to an older version
            self._ensure_resident(adapter, pinned=self._in_use())

        await self._call(add)

    async def remove_adapter(self, name: str) -> None:
        def retire() -> None:
            self._retired.add(name)
            self._unload_retired()

        await self._call(retire)

    async def abort(self, request_id: str) -> None:
        request = self._live.get(request_id)
        if request is not None:
            request.aborted = True  # the engine thread drops it before its next step

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        adapter: LoRAAdapter | None = None,
    ) -> AsyncGenerator[GenerationOutput]:
        request = _Request(
            request_id, list(prompt_token_ids), params, adapter, asyncio.get_running_loop()
        )
        with self._wakeup:
            if self._stopping or self._model is None:
                raise EngineError("engine is not running")
            self._pending.append(request)
            self._wake()
        self._live[request_id] = request
        finished = False
        try:
            while not finished:
                item = await request.outputs.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if self._live.get(request_id) is request:
                del self._live[request_id]
            if not finished:  # the caller went away: free the batch slot
                request.aborted = True

    async def _call(self, command: Callable[[], Any]) -> Any:
        future: Future[Any] = Future()
        with self._wakeup:
            if self._stopping:
                raise EngineError("engine is not running")
            self._commands.append((command, future))
            self._wake()
        return await asyncio.wrap_future(future)

    def _wake(self) -> None:
        """Called holding `_wakeup`, with new work queued: the engine's thread takes it, or a new
        one does if the last ended idle."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hf-engine", daemon=True)
            self._thread.start()
        self._wakeup.notify()

    # --- engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while self._idle():
                    if not self._wakeup.wait(self.idle_seconds) and self._idle():
                        self._thread = None
                        return
                if self._stopping:
                    break
            if self._pending and not self._rows and not self._commands:
                self._await_arrivals()
            with self._wakeup:
                commands = list(self._commands)
                self._commands.clear()
            # Between two steps: a new version is loaded without waiting for running requests.
            for command, future in commands:
                if not future.set_running_or_notify_cancel():
                    continue  # its caller was cancelled (a request gone, a shutdown)
                try:
                    future.set_result(command())
                except BaseException as error:
                    future.set_exception(error)
            with self._wakeup:
                joining = self._take_joining()
            if joining:
                self._join(joining)
            if self._rows:
                self._step()
            if not self._retired.isdisjoint(self._resident):
                self._unload_retired()
        with self._wakeup:
            for request in [*self._pending, *self._rows.values()]:
                request.emit(EngineError("engine shut down"))
            self._pending.clear()
            self._rows.clear()
            for _, future in self._commands:
                future.set_exception(EngineError("engine shut down"))
            self._commands.clear()

    def _idle(self) -> bool:
        return not (self._pending or self._commands or self._stopping or self._rows)

    def _await_arrivals(self) -> None:
        """Lets a burst of concurrent calls start together in one prefill: waits until no request
        arrived for `batch_wait_seconds`, the batch is full, or `max_batch_wait_seconds` passed."""
        deadline = time.monotonic() + self.max_batch_wait_seconds
        seen = 0
        while time.monotonic() < deadline:
            with self._wakeup:
                arrived = len(self._pending)
            if arrived == seen or arrived >= self.max_batch_size:
                return
            seen = arrived
            time.sleep(self.batch_wait_seconds)

    def _in_use(self) -> set[str]:
        return {r.adapter.name for r in self._rows.values() if r.adapter}

    def _take_joining(self) -> list[_Request]:
        """Oldest first, into the free rows of the batch, while the adapters of the running and
        joining requests fit among the resident ones."""
        joining: list[_Request] = []
        adapters = self._in_use()
        deferred: deque[_Request] = deque()
        while self._pending and len(self._rows) + len(joining) < self.max_batch_size:
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
            joining.append(request)
        self._pending.extendleft(reversed(deferred))
        return joining

    def _join(self, joining: list[_Request]) -> None:
        pinned = self._in_use() | {r.adapter.name for r in joining if r.adapter}
        rows: list[DecodeRow] = []
        for request in joining:
            try:
                if request.adapter:
                    self._ensure_resident(request.adapter, pinned)
            except AdapterLoadError as error:
                request.emit(error)
                continue
            rows.append(
                DecodeRow(
                    request.prompt_ids,
                    request.params,
                    request.adapter.name if request.adapter else None,
                )
            )
            self._rows[id(rows[-1])] = request
        if not rows:
            return
        self.stats["batches"] += 1
        self.stats["requests"] += len(rows)
        self._advance(lambda: self._batch.join(rows), rows)

    def _step(self) -> None:
        for row in self._batch.rows:
            if self._rows[id(row)].aborted:
                row.finish_reason = "abort"
        self._finish()
        if self._batch.rows:
            self._advance(self._batch.step, self._batch.rows)

    def _advance(self, forward: Callable[[], list[DecodeRow]], rows: list[DecodeRow]) -> None:
        """Runs a prefill or a step, streams what moved, and ends the rows that finished."""
        try:
            moved = forward()
        except Exception as error:
            log.exception("a step of %d rows failed", len(self._rows))
            for request in self._rows.values():
                request.emit(EngineError(f"generation failed: {type(error).__name__}"))
            self._rows.clear()
            self._batch = self._new_batch()
            return
        for row in moved:
            if row.finish_reason is None:
                request = self._rows[id(row)]
                request.emit(request.output(row, finished=False))
        self._finish()

    def _finish(self) -> None:
        for row in self._batch.leave():
            request = self._rows.pop(id(row))
            self.stats["aborted"] += row.finish_reason == "abort"
            request.emit(request.output(row, finished=True))

    def _new_batch(self) -> RunningBatch:
        assert self._model is not None and self._bank is not None
        return RunningBatch(self._model, self._tokenizer, self._bank.select)

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
            self._bank.add(adapter.name, adapter.sources)
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
        wanted |= self._in_use()
        for name in (self._retired & self._resident.keys()) - wanted:
            self._unload(name)

    def _unload(self, name: str, reason: str = "unloaded") -> None:
        if name not in self._resident:
            return
        del self._resident[name]
        assert self._bank is not None
        self._bank.remove(name)
        log.info("adapter %s %s resident=%d", name, reason, len(self._resident))
