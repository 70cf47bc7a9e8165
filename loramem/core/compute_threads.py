"""Threads that compute with torch, and end when their work does.

Torch's CPU kernels run on GNU OpenMP, which gives every thread that starts a parallel region a
pool of worker threads of its own, kept until that thread ends. Once the pools of a process hold
more threads than there are cores, every pool's workers stop spinning between parallel regions and
sleep on a futex instead, and each of the thousands of small regions of a training step waits for
them to wake: on 2 cores a training step of 8 rows of 300 tokens took 15.0 s in a thread beside
another live thread that had computed, against 9.5 s once that thread had ended, and it used 1.13
cores instead of 1.98 (`bench.train_step`'s thread rows). In the server, the HF engine's loop,
the embedded trainer and the threads that embed queries for routing are such threads: the clinic
article's job trained at 4.9 s a step inside the server against 3.0 s in a worker process alone,
and at 3.1 s inside the server once these threads ended with their work (`bench.in_server`).

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
        self._name = name

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:
                future.set_exception(error)

        threading.Thread(target=run, name=self._name, daemon=True).start()
        return future


def in_own_thread(name: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)` in a thread that ends with it; its result, or its exception."""
    return ThreadPerCall(name).submit(fn, *args, **kwargs).result()
