"""A thread that computes with torch ends with its work, and takes its OpenMP pool along."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
import torch

from loramem.core.compute_threads import ThreadPerCall, in_own_thread


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _settled_threads(expected: int) -> int:
    """The process's thread count, once pool threads told to end have ended (or 2 s passed)."""
    deadline = time.monotonic() + 2
    while _threads() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return _threads()


def _parallel_work() -> float:
    """Large enough that torch runs it on every intra-op thread."""
    return float((torch.ones(1 << 22) * 1.5).sum())


def test_a_call_in_its_own_thread_returns_its_result_and_leaves_no_thread_behind() -> None:
    before = _threads()
    assert in_own_thread("work", _parallel_work) == 1.5 * (1 << 22)
    assert _settled_threads(before) == before
    # Not merely a pool this thread already had: the call ran elsewhere, in a thread now ended.
    ran_in = in_own_thread("work", threading.current_thread)
    assert ran_in is not threading.current_thread()
    ran_in.join(5)
    assert not ran_in.is_alive()


def test_a_call_in_its_own_thread_raises_what_it_raised() -> None:
    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        in_own_thread("work", fail)


def test_the_pool_of_a_thread_that_stays_alive_stays_too() -> None:
    """The contrast that makes the one above mean something: where torch computes on several
    threads, a live thread that computed keeps its pool's threads."""
    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread: torch makes no pool")
    before = _threads()
    computed, done = threading.Event(), threading.Event()

    def compute_then_wait() -> None:
        _parallel_work()
        computed.set()
        done.wait()

    alive = threading.Thread(target=compute_then_wait)
    alive.start()
    computed.wait()
    try:
        assert _threads() > before + 1  # itself and at least one pool thread
    finally:
        done.set()
        alive.join()


async def test_the_event_loops_calls_each_run_in_a_thread_that_ends() -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPerCall("loop-call"))
    seen = [await asyncio.to_thread(threading.current_thread) for _ in range(3)]
    assert len({id(thread) for thread in seen}) == 3
    assert all(thread.name == "loop-call" for thread in seen)
    for thread in seen:
        thread.join(5)
        assert not thread.is_alive()
