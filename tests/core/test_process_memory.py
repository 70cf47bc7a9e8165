"""The process's memory, as job log lines and `GET /admin/engine` report it."""

from __future__ import annotations

from loramem.core.metrics import process_memory


def test_the_peak_covers_what_was_allocated_and_freed() -> None:
    before = process_memory()
    assert before is not None and 0 < before.rss <= before.peak
    block = bytearray(256 * 2**20)  # touched by the zero-fill: resident
    during = process_memory()
    del block
    after = process_memory()
    assert during is not None and after is not None
    assert during.rss >= before.rss + 200 * 2**20
    # The kernel folds in per-thread counters lazily: the peak may trail by a few pages.
    assert after.peak >= before.rss + 200 * 2**20 > after.rss
    assert "GiB" in str(after)
