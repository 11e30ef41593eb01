"""The API's JSON, as pydantic models: they make the OpenAPI document and
check every answer against it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ActivityEventOut",
    "ActivityOut",
    "CancelOut",
    "CancelRefusedOut",
    "DeadAllIn",
    "DeadIdsIn",
    "DeadLetterOut",
    "DeadLettersOut",
    "DeadSettleIn",
    "DeadSettledOut",
    "ErrorOut",
    "EventOut",
    "EventsOut",
    "FailureOut",
    "FailuresOut",
    "HealthOut",
    "JobOut",
    "JobPage",
    "JobStatusFilter",
    "OutcomeCountsOut",
    "OverviewOut",
    "QueueOut",
    "QueuesOut",
    "RetryOut",
    "ScanIn",
    "StageOut",
    "ThroughputOut",
    "ThroughputSeriesOut",
    "TypeCountsOut",
    "WatchPage",
    "WatchStateName",
    "WatchedOut",
    "WorkerCountsOut",
    "WorkerOut",
    "WorkersOut",
]

JobStatusName = Literal["pending", "in_progress", "completed", "failed", "cancelled"]
StageStatusName = Literal["pending", "in_progress", "completed", "failed"]
#: The job list's status filter: a job status, or ``active`` (pending or in progress).
JobStatusFilter = Literal["pending", "in_progress", "completed", "failed", "cancelled", "active"]


class StageOut(BaseModel):
    """One stage's counts."""

    status: StageStatusName
    total_items: int = Field(ge=0)
    completed_items: int = Field(ge=0)
    failed_items: int = Field(ge=0)
    total_final: bool
    message: str
    started_at: str | None
    completed_at: str | None


class JobOut(BaseModel):
    """A job as in the JSON contract; a job type's attributes (a
    collection-scan's ``collection``) are further keys."""

    model_config = ConfigDict(extra="allow")

    id: str
    job_type: str
    status: JobStatusName
    created_at: str
    updated_at: str
    completed_at: str | None
    message: str
    #: The job's last write in the store's change sequence (grows with every write).
    seq: int
    stages: dict[str, StageOut]


class JobPage(BaseModel):
    """A page of jobs, newest first; ``next_offset`` is None on the last page."""

    jobs: list[JobOut]
    limit: int
    offset: int
    next_offset: int | None


class EventOut(BaseModel):
    """One entry of a job's history."""

    id: int
    at: str
    kind: str
    message: str
    data: dict[str, Any]


class ActivityEventOut(EventOut):
    """One entry of some job's history."""

    job_id: str


class ActivityOut(BaseModel):
    """The latest events of every job, newest first: the monitor's activity
    (reconciled, redriven, failed) and the users' (cancelled, retried)."""

    events: list[ActivityEventOut]


class EventsOut(BaseModel):
    """A job's history, oldest first."""

    job_id: str
    events: list[EventOut]


class FailureOut(BaseModel):
    """An item that failed, in which stages, and why."""

    image: str
    stages: list[str]
    error: str


class FailuresOut(BaseModel):
    """A job's failed items."""

    job_id: str
    failures: list[FailureOut]


class ScanIn(BaseModel):
    """A folder to scan: absolute, or relative to the server's first root."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=4096)


class CancelOut(BaseModel):
    """What a cancel did (``outcome``: cancelled, or ended), and the job after
    the call; ``ended_as`` is the status of a job that had already ended."""

    outcome: Literal["cancelled", "ended"]
    cancelled: bool
    ended_as: JobStatusName | None
    message: str
    job: JobOut


class CancelRefusedOut(CancelOut):
    """A cancel that cancelled nothing (409), with the reason as ``error``."""

    error: str


class RetryOut(BaseModel):
    """The new job that re-drives an ended job's failed items."""

    retried_from: str
    failed_items: int = Field(ge=0)
    job: JobOut


class HealthOut(BaseModel):
    """The server and its store."""

    status: Literal["ok"]
    store: Literal["ok"]


class ErrorOut(BaseModel):
    """Every error: a message, never a traceback."""

    error: str
    detail: list[dict[str, Any]] | None = None


# Queues and dead letters


class QueueOut(BaseModel):
    """A stage queue's numbers; ``unacked`` and ``oldest_seconds`` are null
    where the broker does not tell (RabbitMQ without its management API)."""

    queue: str
    job_type: str
    stage: str
    messages: int = Field(ge=0, description="ready messages (the queue's depth)")
    consumers: int = Field(ge=0)
    unacked: int | None = Field(ge=0, description="delivered, not yet settled")
    oldest_seconds: float | None = Field(ge=0, description="age of the oldest message")
    dead_queue: str
    dead_letters: int = Field(ge=0, description="messages in its dead-letter queue")


class QueuesOut(BaseModel):
    """Every stage queue of the server's app, and whether the broker is one
    other processes share (``memory://`` is the server's own, which its
    scans run on)."""

    broker: Literal["memory", "shared"]
    queues: list[QueueOut]


class DeadLetterOut(BaseModel):
    """One dead letter: its id (for requeue and drop), why it died, its
    delivery count (null where the queue does not count) and when (null
    when unknown), the job, stage and item key its body decodes to (null
    when it does not decode) and the start of its body."""

    id: str
    reason: str
    delivery_count: int | None
    died_at: str | None
    job_id: str | None
    job_type: str | None
    stage: str | None
    key: str | None
    preview: str


class DeadLettersOut(BaseModel):
    """The first dead letters of a stage queue, oldest first."""

    queue: str
    dead_queue: str
    total: int = Field(ge=0, description="every dead letter of the queue")
    dead_letters: list[DeadLetterOut]


class DeadIdsIn(BaseModel):
    """The dead letters to send back or drop, by id."""

    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=1000
    )


class DeadAllIn(BaseModel):
    """Every dead letter of the queue."""

    model_config = ConfigDict(extra="forbid")

    all: Literal[True]


DeadSettleIn = DeadIdsIn | DeadAllIn
"""Which dead letters to send back or drop: ``{"ids": [...]}`` or ``{"all": true}``."""


class DeadSettledOut(BaseModel):
    """The dead letters sent back (``requeued``) or dropped, and how many
    the dead-letter queue still holds (a request for all of them takes at
    most 1,000)."""

    queue: str
    action: Literal["requeued", "dropped"]
    dead_letters: list[DeadLetterOut]
    remaining: int


# The operator's overview: counts per job type, the watch list.

WatchStateName = Literal["stuck", "waiting", "redriving"]


class TypeCountsOut(BaseModel):
    """One job type's jobs (or, as ``totals``, every type's): per status,
    ``active`` (pending or in progress), and the active ones stuck, waiting
    behind a backlog or being re-driven by the monitor."""

    job_type: str
    active: int
    pending: int
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    stuck: int
    waiting: int
    redriving: int


class OverviewOut(BaseModel):
    """The counts of the overview: per job type, in name order, and over
    all of them; ``stuck_after`` is the seconds without a write after which
    an active job counts as stuck."""

    types: list[TypeCountsOut]
    totals: TypeCountsOut
    stuck_after: float


class WatchedOut(BaseModel):
    """An active job on the watch list: why it is there (``states``, worst
    first, and ``reason`` in words) and the monitor's last action on it
    (its latest waiting, redriven or reconciled event; None before any)."""

    id: str
    job_type: str
    status: Literal["pending", "in_progress"]
    message: str
    created_at: str
    updated_at: str
    states: list[WatchStateName]
    reason: str
    action: EventOut | None


class WatchPage(BaseModel):
    """A page of the watch list, newest first; ``next_offset`` is None on
    the last page."""

    jobs: list[WatchedOut]
    limit: int
    offset: int
    next_offset: int | None
    stuck_after: float


# Workers and throughput (GET /api/workers, GET /api/throughput).

WorkerStateName = Literal["live", "dead", "stopped"]


class WorkerOut(BaseModel):
    """A worker process as its last heartbeat tells it: live, dead (no beat
    for more than two intervals; ``dead_since``: its last beat) or stopped."""

    id: str
    state: WorkerStateName
    host: str
    pid: int = Field(ge=0)
    stages: list[str]
    concurrency: int = Field(ge=0)
    prefetch: int = Field(ge=0)
    interval: float = Field(gt=0)
    done: int = Field(ge=0)
    failed: int = Field(ge=0)
    last_error: str | None
    last_error_at: str | None
    started_at: str
    beat_at: str
    stopped_at: str | None
    dead_since: str | None


class WorkerCountsOut(BaseModel):
    """How many workers are in each state."""

    live: int = Field(ge=0)
    dead: int = Field(ge=0)
    stopped: int = Field(ge=0)


class WorkersOut(BaseModel):
    """Every worker, live first, and the server's heartbeat interval."""

    heartbeat_interval: float
    counts: WorkerCountsOut
    workers: list[WorkerOut]


class OutcomeCountsOut(BaseModel):
    """Items done and failed."""

    done: int = Field(ge=0)
    failed: int = Field(ge=0)


class ThroughputSeriesOut(BaseModel):
    """One job type's stage: items done and failed per bucket (aligned with
    ``buckets``), and its totals of the last minute and hour."""

    job_type: str
    stage: str
    done: list[int]
    failed: list[int]
    last_minute: OutcomeCountsOut
    last_hour: OutcomeCountsOut


class ThroughputOut(BaseModel):
    """Items counted by the workers, per job type and stage, in buckets of
    ``bucket_seconds`` (their starts in ``buckets``, oldest first), with
    the totals of the last minute and hour over every stage."""

    bucket_seconds: int
    minutes: int
    now: str
    buckets: list[str]
    series: list[ThroughputSeriesOut]
    last_minute: OutcomeCountsOut
    last_hour: OutcomeCountsOut
