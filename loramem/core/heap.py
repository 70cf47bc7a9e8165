"""Handing the heap memory a job freed back to the operating system.

glibc's malloc keeps what Python and torch free (a training step's activations, autocast's bf16
copies of the weights, the round trip's KV caches) in its arenas for reuse, and returns little of
it on its own: the worker that trained a 300-word article stayed at 2.34 GiB resident after the
job against 1.20 GiB before training. `malloc_trim` returns the free pages (1.15 GiB after 16
steps of article-sized batches, against 1.82 without it), so a server that memorized something
does not hold on to the memory its training needed. Where the C library has no `malloc_trim`
(musl, macOS), nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from typing import Any

__all__ = ["release_free_heap"]


@functools.cache
def _malloc_trim() -> Callable[[int], Any] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def release_free_heap() -> bool:
    """Returns the heap's free pages to the system; False where this C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
