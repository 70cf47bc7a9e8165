"""Freed heap memory goes back to the system (glibc's malloc_trim), as the worker does after each
stage of a job."""

from __future__ import annotations

import ctypes
import platform

import pytest

from loramem.core.heap import release_free_heap
from loramem.core.metrics import process_memory

BLOCK = 64 * 1024  # below glibc's mmap threshold: served from the heap and kept there when freed


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_system() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(BLOCK) for _ in range(3200)]  # 200 MiB, touched so that it is resident
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)
    # The last block stays in use, so the heap cannot shrink from its top by itself.
    for block in blocks[:-1]:
        libc.free(block)
    before = process_memory()
    assert release_free_heap()
    after = process_memory()
    libc.free(blocks[-1])
    assert before is not None and after is not None
    assert before.rss - after.rss > 150 * 2**20
