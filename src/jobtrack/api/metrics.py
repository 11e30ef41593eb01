"""``GET /metrics``: Prometheus text, from the store (true across every
process: items per stage, jobs per status, stuck jobs, the monitor's
reconciliations and re-drives as recorded in job events) and from this
process (its progress writes and their latency). ``jobtrack worker
--metrics-port`` serves a worker's own progress writes the same way."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from jobtrack.store import StoreStats, WorkerInfo, WorkerState
from jobtrack.tracking.stats import LATENCY_BUCKETS, WRITE_STATS, WriteStats

__all__ = [
    "StoreCollector",
    "WorkerCollector",
    "WriteCollector",
    "render_metrics",
    "serve_write_metrics",
]


class StoreCollector(Collector):
    """Totals read from the store (one ``JobStore.stats`` per scrape)."""

    def __init__(self, stats: StoreStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        items = GaugeMetricFamily(
            "jobtrack_stage_items",
            "Items finished, per stage and outcome, over every job in the store",
            labels=["stage", "outcome"],
        )
        for stage, (completed, failed) in sorted(stats.items.items()):
            items.add_metric([stage, "completed"], completed)
            items.add_metric([stage, "failed"], failed)
        yield items
        jobs = GaugeMetricFamily(
            "jobtrack_jobs", "Jobs in the store, per status", labels=["status"]
        )
        for status, count in sorted(stats.jobs.items()):
            jobs.add_metric([status], count)
        yield jobs
        yield GaugeMetricFamily(
            "jobtrack_jobs_stuck",
            "Active jobs not written for longer than the stuck threshold",
            value=stats.stuck,
        )
        yield GaugeMetricFamily(
            "jobtrack_jobs_waiting",
            "Active jobs the monitor left alone, waiting behind a backlog that is being consumed",
            value=stats.waiting,
        )
        events = CounterMetricFamily(
            "jobtrack_job_events",
            "Job events recorded (reconciled, redriven, failed, cancelled…), per kind",
            labels=["kind"],
        )
        for kind, count in sorted(stats.events.items()):
            events.add_metric([kind], count)
        yield events


class WriteCollector(Collector):
    """This process's progress writes, read at each scrape."""

    def __init__(self, writes: WriteStats) -> None:
        self._writes = writes

    def collect(self) -> Iterator[Metric]:
        writes = self._writes
        yield CounterMetricFamily(
            "jobtrack_progress_writes",
            "Progress writes made by this process (one per flush, or per item)",
            value=writes.writes,
        )
        yield CounterMetricFamily(
            "jobtrack_progress_write_failures",
            "Progress writes of this process the store did not take (kept, retried)",
            value=writes.failed_writes,
        )
        yield CounterMetricFamily(
            "jobtrack_progress_items", "Items this process's writes stored", value=writes.items
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), writes.buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "jobtrack_progress_write_seconds",
            "Latency of this process's progress writes (a flush, or one increment)",
            buckets=buckets,
            sum_value=writes.latency_sum,
        )


class WorkerCollector(Collector):
    """The workers' heartbeats (one ``JobStore.list_workers`` per scrape):
    workers per state, and the items the live ones counted since they started."""

    def __init__(self, workers: Sequence[WorkerInfo]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "jobtrack_workers",
            "Worker processes by the state of their heartbeat (live, dead, stopped)",
            labels=["state"],
        )
        counts = dict.fromkeys(WorkerState, 0)
        done = failed = 0
        for info in self._workers:
            counts[info.state] += 1
            if info.state is WorkerState.LIVE:
                done += info.beat.done
                failed += info.beat.failed
        for state, count in counts.items():
            states.add_metric([state.value], count)
        yield states
        items = GaugeMetricFamily(
            "jobtrack_worker_items",
            "Items the live workers counted since they started, per outcome (from heartbeats)",
            labels=["outcome"],
        )
        items.add_metric(["done"], done)
        items.add_metric(["failed"], failed)
        yield items


def render_metrics(
    stats: StoreStats, writes: WriteStats, workers: Sequence[WorkerInfo] | None = None
) -> bytes:
    """The exposition text of the API's ``/metrics`` (with ``workers``,
    their heartbeats' metrics too)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(stats))
    registry.register(WriteCollector(writes))
    if workers is not None:
        registry.register(WorkerCollector(workers))
    return generate_latest(registry)


def serve_write_metrics(port: int, *, host: str = "127.0.0.1") -> None:
    """Serve this process's progress-write metrics on ``host:port``
    (``/metrics``, in a thread): how a worker shows its flushes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WriteCollector(WRITE_STATS))
    start_http_server(port, addr=host, registry=registry)
