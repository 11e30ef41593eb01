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

from jobtrack.runtime.queues import QueueRow
from jobtrack.store import StoreStats, TypeCounts, WorkerInfo, WorkerState
from jobtrack.tracking.stats import LATENCY_BUCKETS, WRITE_STATS, WriteStats

__all__ = [
    "OverviewCollector",
    "QueueCollector",
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


class QueueCollector(Collector):
    """The app's stage queues as the broker tells them (read once per
    scrape): a metric with no value known for a queue is left out for it."""

    def __init__(self, rows: list[QueueRow]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        families = {
            "messages": GaugeMetricFamily(
                "jobtrack_queue_messages", "Messages ready in a stage queue", labels=["queue"]
            ),
            "consumers": GaugeMetricFamily(
                "jobtrack_queue_consumers", "Consumers of a stage queue", labels=["queue"]
            ),
            "unacked": GaugeMetricFamily(
                "jobtrack_queue_unacked",
                "Messages of a stage queue delivered and not yet settled (where the broker tells)",
                labels=["queue"],
            ),
            "oldest": GaugeMetricFamily(
                "jobtrack_queue_oldest_seconds",
                "Age of a stage queue's oldest message (where it can be known)",
                labels=["queue"],
            ),
            "dead": GaugeMetricFamily(
                "jobtrack_dead_letters",
                "Messages in a stage queue's dead-letter queue",
                labels=["queue"],
            ),
        }
        for row in self._rows:
            name = [row.queue.queue]
            families["messages"].add_metric(name, row.stats.messages)
            families["consumers"].add_metric(name, row.stats.consumers)
            if row.stats.unacked is not None:
                families["unacked"].add_metric(name, row.stats.unacked)
            if row.stats.oldest_seconds is not None:
                families["oldest"].add_metric(name, row.stats.oldest_seconds)
            families["dead"].add_metric(name, row.dead_letters)
        yield from families.values()


class OverviewCollector(Collector):
    """Per job type, its active jobs and those stuck or waiting (one
    ``JobStore.count_by_type`` per scrape): the overview's counts."""

    _GAUGES = (
        ("jobtrack_jobs_active_by_type", "Jobs pending or in progress, per job type", "active"),
        (
            "jobtrack_jobs_stuck_by_type",
            "Active jobs not written for longer than the stuck threshold, per job type",
            "stuck",
        ),
        (
            "jobtrack_jobs_waiting_by_type",
            "Active jobs the monitor left alone behind a backlog being consumed, per job type",
            "waiting",
        ),
    )

    def __init__(self, counts: Sequence[TypeCounts]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        for name, text, field in self._GAUGES:
            gauge = GaugeMetricFamily(name, text, labels=["job_type"])
            for counts in self._counts:
                gauge.add_metric([counts.job_type], getattr(counts, field))
            yield gauge


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


def render_metrics(stats: StoreStats, writes: WriteStats, *more: Collector) -> bytes:
    """The exposition text of the API's ``/metrics``: the store's totals,
    this process's writes, and ``more`` collectors (the queues', the job
    types' counts, the workers'…)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(stats))
    registry.register(WriteCollector(writes))
    for collector in more:
        registry.register(collector)
    return generate_latest(registry)


def serve_write_metrics(port: int, *, host: str = "127.0.0.1") -> None:
    """Serve this process's progress-write metrics on ``host:port``
    (``/metrics``, in a thread): how a worker shows its flushes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WriteCollector(WRITE_STATS))
    start_http_server(port, addr=host, registry=registry)
