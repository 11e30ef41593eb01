"""The JSON of ``GET /api/workers`` and ``GET /api/throughput``: the
workers' heartbeats with their states, and the items counted per job type
and stage as a series of buckets with the last minute's and hour's totals."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from jobtrack.store import ThroughputPoint, WorkerInfo, WorkerState
from jobtrack.store.workers import THROUGHPUT_BUCKET, bucket_start

__all__ = ["LAST_HOUR", "LAST_MINUTE", "throughput_json", "throughput_since", "workers_json"]

#: The spans of the totals (the buckets that start within them).
LAST_MINUTE = timedelta(minutes=1)
LAST_HOUR = timedelta(hours=1)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def workers_json(workers: Sequence[WorkerInfo], interval: float) -> dict[str, Any]:
    """Every worker with its state (``dead_since``: when a dead worker's
    heartbeat stopped), how many are in each state, and ``interval``, the
    heartbeat interval of this server's settings."""
    counts = dict.fromkeys((state.value for state in WorkerState), 0)
    rows = []
    for info in workers:
        beat = info.beat
        counts[info.state.value] += 1
        rows.append(
            {
                "id": beat.worker_id,
                "state": info.state.value,
                "host": beat.host,
                "pid": beat.pid,
                "stages": list(beat.stages),
                "concurrency": beat.concurrency,
                "prefetch": beat.prefetch,
                "interval": beat.interval,
                "done": beat.done,
                "failed": beat.failed,
                "last_error": beat.last_error,
                "last_error_at": _iso(beat.last_error_at),
                "started_at": _iso(beat.started_at),
                "beat_at": _iso(beat.beat_at),
                "stopped_at": _iso(beat.stopped_at),
                "dead_since": _iso(beat.beat_at) if info.state is WorkerState.DEAD else None,
            }
        )
    return {"heartbeat_interval": interval, "counts": counts, "workers": rows}


def _span_start(now: datetime, span: timedelta) -> datetime:
    """The first bucket of the ``span`` up to now (the current one included)."""
    return bucket_start(now) - span + timedelta(seconds=THROUGHPUT_BUCKET)


def throughput_since(now: datetime, minutes: int) -> datetime:
    """From when :func:`throughput_json` needs the buckets."""
    return min(_span_start(now, timedelta(minutes=minutes)), _span_start(now, LAST_HOUR))


def throughput_json(
    points: Sequence[ThroughputPoint], now: datetime, minutes: int
) -> dict[str, Any]:
    """Per job type and stage, done and failed per bucket over the last
    ``minutes`` (one entry per bucket, oldest first, empty buckets as 0), and
    the totals of the last minute and hour, each also over every stage."""
    first = _span_start(now, timedelta(minutes=minutes))
    count = (bucket_start(now) - first) // timedelta(seconds=THROUGHPUT_BUCKET) + 1
    minute, hour = _span_start(now, LAST_MINUTE), _span_start(now, LAST_HOUR)
    series: dict[tuple[str, str], dict[str, Any]] = {}
    totals = {"last_minute": [0, 0], "last_hour": [0, 0]}
    for point in points:
        entry = series.get((point.job_type, point.stage))
        if entry is None:
            entry = series[point.job_type, point.stage] = {
                "job_type": point.job_type,
                "stage": point.stage,
                "done": [0] * count,
                "failed": [0] * count,
                "last_minute": {"done": 0, "failed": 0},
                "last_hour": {"done": 0, "failed": 0},
            }
        at = point.bucket_start
        index = (at - first) // timedelta(seconds=THROUGHPUT_BUCKET)
        if 0 <= index < count:
            entry["done"][index] += point.done
            entry["failed"][index] += point.failed
        for name, start in (("last_minute", minute), ("last_hour", hour)):
            if at >= start:
                entry[name]["done"] += point.done
                entry[name]["failed"] += point.failed
                totals[name][0] += point.done
                totals[name][1] += point.failed
    return {
        "bucket_seconds": THROUGHPUT_BUCKET,
        "minutes": minutes,
        "now": _iso(now),
        "buckets": [_iso(first + timedelta(seconds=THROUGHPUT_BUCKET * i)) for i in range(count)],
        "series": [series[key] for key in sorted(series)],
        **{name: {"done": done, "failed": failed} for name, (done, failed) in totals.items()},
    }
