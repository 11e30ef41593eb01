"""Worker heartbeats and throughput, as the store keeps them.

Every worker process (``jobtrack worker``, the embedded runtime of a scan)
writes one heartbeat every ``heartbeat_interval`` seconds
(:meth:`~jobtrack.store.base.JobStore.beat_worker`): one row per worker,
written by that worker alone, and, in the same transaction, the items it
counted per job type and stage since its previous beat, added to its own
row of the :data:`THROUGHPUT_BUCKET`-second bucket the beat falls in (rows
keyed by bucket, worker, job type and stage, so no two workers ever write
the same row). Reads sum the buckets over the workers
(:meth:`~jobtrack.store.base.JobStore.throughput`) and tell each worker's
state from its last beat (:func:`worker_state`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from jobtrack.errors import InvalidRequest
from jobtrack.store.text import text_problem

__all__ = [
    "DEAD_GRACE",
    "MAX_WORKER_ERROR",
    "MAX_WORKER_STAGES",
    "THROUGHPUT_BUCKET",
    "WORKER_RETENTION",
    "StageCount",
    "ThroughputPoint",
    "WorkerBeat",
    "WorkerInfo",
    "WorkerState",
    "bucket_start",
    "check_beat",
    "count_problem",
    "sorted_workers",
    "worker_name_problem",
    "worker_state",
]

#: Seconds each throughput bucket spans.
THROUGHPUT_BUCKET = 10
#: Seconds past two missed beats before a worker counts as dead, at most
#: (a quarter of its interval when that is less).
DEAD_GRACE = 1.0
#: How long the rows of stopped or dead workers, and old buckets, are kept.
WORKER_RETENTION = timedelta(hours=24)
#: The longest last error kept (longer ones are cut).
MAX_WORKER_ERROR = 500
#: The most stages (queues) a heartbeat names.
MAX_WORKER_STAGES = 200
_MAX_NAME = 200


class WorkerState(enum.StrEnum):
    """What a worker's last heartbeat says of it."""

    LIVE = "live"
    DEAD = "dead"  # no beat for more than two intervals, and no graceful stop
    STOPPED = "stopped"  # stopped gracefully


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    """One worker's heartbeat: who it is, what it consumes, what it did.

    ``done`` and ``failed`` count the items since the worker started;
    ``interval`` is the worker's heartbeat interval in seconds (what its
    state is judged by); ``stopped_at`` is set by the last beat of a
    graceful stop. ``seq`` numbers the worker's beats from 1: a beat whose
    number is not above the last one written is one written again (its
    write committed, the answer was lost) and changes nothing, its counts
    not added twice; 0 is a beat without a number, always written. The
    store stamps ``beat_at`` (and ``stopped_at``) with its own clock: a
    worker's state is judged by one clock, whatever the worker's says.
    """

    worker_id: str
    host: str
    pid: int
    stages: tuple[str, ...]
    concurrency: int
    prefetch: int
    interval: float
    started_at: datetime
    beat_at: datetime
    done: int = 0
    failed: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    stopped_at: datetime | None = None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class StageCount:
    """Items of a job type's stage a worker counted since its previous beat."""

    job_type: str
    stage: str
    done: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker as read back: its last heartbeat and the state it implies
    (a dead worker's heartbeat stopped at ``beat.beat_at``)."""

    beat: WorkerBeat
    state: WorkerState


@dataclass(frozen=True, slots=True)
class ThroughputPoint:
    """Items of a job type's stage counted in one bucket, over every worker."""

    bucket_start: datetime
    job_type: str
    stage: str
    done: int
    failed: int


def worker_state(beat: WorkerBeat, now: datetime) -> WorkerState:
    """Stopped when the worker said so; dead when it has not beaten for more
    than two of its intervals (plus a grace: :data:`DEAD_GRACE`, or a
    quarter of the interval when less); else live."""
    if beat.stopped_at is not None:
        return WorkerState.STOPPED
    grace = min(DEAD_GRACE, beat.interval / 4)
    if (now - beat.beat_at).total_seconds() > 2 * beat.interval + grace:
        return WorkerState.DEAD
    return WorkerState.LIVE


_ORDER = {WorkerState.LIVE: 0, WorkerState.DEAD: 1, WorkerState.STOPPED: 2}


def sorted_workers(beats: Sequence[WorkerBeat], now: datetime) -> list[WorkerInfo]:
    """The workers with their states: live first, then dead, then stopped,
    each the latest beat first (then by id)."""
    infos = [WorkerInfo(beat, worker_state(beat, now)) for beat in beats]
    infos.sort(key=lambda info: info.beat.worker_id)
    infos.sort(key=lambda info: info.beat.beat_at, reverse=True)
    infos.sort(key=lambda info: _ORDER[info.state])
    return infos


def bucket_start(at: datetime) -> datetime:
    """The start of the throughput bucket ``at`` falls in."""
    seconds = int(at.timestamp()) // THROUGHPUT_BUCKET * THROUGHPUT_BUCKET
    return datetime.fromtimestamp(seconds, UTC)


def worker_name_problem(name: str) -> str | None:
    """Why a store would refuse ``name`` as a worker's id, host, stage or
    job type (empty, over 200 characters, text no store holds), or None."""
    if not name or len(name) > _MAX_NAME:
        return f"a worker's names must have 1 to {_MAX_NAME} characters"
    return text_problem(name, "a worker's name")


def count_problem(count: StageCount) -> str | None:
    """Why a store would refuse ``count`` in a heartbeat (a job type or
    stage name empty, over 200 characters or text no store holds; a
    negative or too large number), or None when it would take it."""
    for name in (count.job_type, count.stage):
        problem = worker_name_problem(name)
        if problem is not None:
            return problem
    if not (0 <= count.done < 2**63 and 0 <= count.failed < 2**63):
        return "a heartbeat's numbers must be positive"
    return None


def check_beat(beat: WorkerBeat, counts: Sequence[StageCount], now: datetime) -> WorkerBeat:
    """The beat as a store keeps it: stamped ``now`` by the store's clock
    (``beat_at``, and ``stopped_at`` when it has one), its last error cut
    to :data:`MAX_WORKER_ERROR` characters.

    :raises InvalidRequest: an empty or overlong id, host, stage or job type,
        text no store can hold, more than :data:`MAX_WORKER_STAGES` stages,
        negative numbers, or an interval that is not a finite positive number.
    """
    names = [beat.worker_id, beat.host, *beat.stages]
    names += [name for count in counts for name in (count.job_type, count.stage)]
    for name in names:
        problem = worker_name_problem(name)
        if problem is not None:
            raise InvalidRequest(problem)
    if len(beat.stages) > MAX_WORKER_STAGES:
        raise InvalidRequest(f"a heartbeat names at most {MAX_WORKER_STAGES} stages")
    numbers = [beat.pid, beat.concurrency, beat.prefetch, beat.done, beat.failed, beat.seq]
    numbers += [n for count in counts for n in (count.done, count.failed)]
    if min(numbers) < 0 or max(numbers) >= 2**63 or not 0 < beat.interval < 1e9:
        raise InvalidRequest(
            "a heartbeat's numbers must be positive and its interval a finite number above 0"
        )
    error = beat.last_error
    if error is not None:
        error = error[:MAX_WORKER_ERROR].replace("\x00", "\ufffd")
        error = error.encode("utf-8", "replace").decode("utf-8")
    stopped_at = None if beat.stopped_at is None else now
    return replace(beat, last_error=error, beat_at=now, stopped_at=stopped_at)
