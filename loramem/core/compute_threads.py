"""Threads that compute with torch, and end when their work does.

Torch's CPU kernels run on GNU OpenMP, which gives every thread that starts a parallel region a
pool of worker threads of its own, kept until that thread ends. Once the pools of a process hold
more threads than there are cores, libgomp has every pool's workers sleep on a futex between
parallel regions instead of spinning, and each of the thousands of small regions of a training
step waits for them to wake: on 2 cores a training step of 8 rows of 300 tokens took 15.0 s in a
thread beside another live thread that had computed, against 9.5 s once that thread had ended
(`bench.train_step`'s thread rows). In the server, the HF engine's loop, the embedded trainer and
any thread of the event loop's executor that ran torch (query embeddings, model loads) are such
threads: the clinic article's job trained at 5.09 s a step on 1.14 cores inside the server
against 3.15 s in a worker process alone, and at 3.00 s against 2.91 s once these threads ended
with their work (`bench.in_server`).

So a thread that computes ends when its work is done (a job, an engine's busy spell, one call
from the event loop), and its pool goes with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

__all__ = ["ThreadPerCall", "in_own_thread"]

P = ParamSpec("P")
T = TypeVar("T")


class ThreadPerCall(ThreadPoolExecutor):
    """An executor that runs each call in a thread of its own, which ends with the call: as the
    event loop's default executor (which asyncio wants a ThreadPoolExecutor), `asyncio.to_thread`
    leaves no pool behind. It keeps no threads, so shutting it down has none to wait for."""

    def __init__(self, name: str = "call") -> None:
        super().__init__(thread_name_prefix=name)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:
                future.set_exception(error)

        threading.Thread(target=run, name=self._thread_name_prefix, daemon=True).start()
        return future


def in_own_thread(name: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)` in a thread that ends with it; its result, or its exception."""
    return ThreadPerCall(name).submit(fn, *args, **kwargs).result()
