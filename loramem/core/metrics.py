"""Prometheus metrics, one registry per app. Names start with `loramem_`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "loramem_requests",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "loramem_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "loramem_time_to_first_token_seconds",
            "From admission to the first generated token",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "loramem_generated_tokens", "Tokens generated", registry=self.registry
        )
        self.refused = Counter(
            "loramem_refused_requests",
            "Generations refused with 429 (queue full)",
            registry=self.registry,
        )
        self.training_step = Histogram(
            "loramem_training_step_seconds",
            "Duration of one training step (embedded worker)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16),
            registry=self.registry,
        )

    def watch(self, read: Callable[[], dict[str, Any]]) -> None:
        """Adds values read at scrape time (engine state, jobs by state)."""
        self.registry.register(_Snapshot(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Snapshot(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def describe(self) -> list[Any]:
        return []  # names are dynamic; nothing to read at registration

    def collect(self) -> Iterator[Any]:
        values = self.read()
        queue = GaugeMetricFamily(
            "loramem_engine_queue_depth", "Generations admitted and not finished"
        )
        queue.add_metric([], values.get("queue_depth", 0))
        yield queue
        resident = GaugeMetricFamily("loramem_adapters_resident", "Adapters loaded in the engine")
        resident.add_metric([], len(values.get("adapters", [])))
        yield resident
        stats = values.get("stats", {})
        for key, help_text in (
            ("adapter_loads", "Adapter loads"),
            ("adapter_evictions", "Adapters evicted to make room"),
            ("batches", "Decoding batches"),
            ("aborted", "Generations aborted"),
        ):
            if key in stats:
                family = CounterMetricFamily(f"loramem_engine_{key}", help_text)
                family.add_metric([], stats[key])
                yield family
        jobs = GaugeMetricFamily("loramem_jobs", "Training jobs by state", labels=["state"])
        for state, count in sorted(values.get("jobs", {}).items()):
            jobs.add_metric([state], count)
        yield jobs


@dataclass(frozen=True)
class ProcessMemory:
    """A process's resident memory now and at its peak (VmRSS, VmHWM), in bytes."""

    rss: int
    peak: int

    def __str__(self) -> str:
        return f"memory {self.rss / 2**30:.2f} GiB, peak {self.peak / 2**30:.2f} GiB"


def process_memory(pid: int | None = None) -> ProcessMemory | None:
    """This process's, or `pid`'s; None where /proc cannot tell (not Linux, the process gone)."""
    fields = {}
    try:
        status = Path(f"/proc/{pid or 'self'}/status").read_text()
        for line in status.splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    except OSError:
        return None
    if len(fields) < 2:
        return None
    return ProcessMemory(rss=fields["VmRSS"], peak=fields["VmHWM"])
