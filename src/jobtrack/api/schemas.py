"""The API's JSON, as pydantic models: they make the OpenAPI document and
check every answer against it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ActivityEventOut",
    "ActivityOut",
    "CancelOut",
    "CancelRefusedOut",
    "ErrorOut",
    "EventOut",
    "EventsOut",
    "FailureOut",
    "FailuresOut",
    "HealthOut",
    "JobOut",
    "JobPage",
    "OutcomeCountsOut",
    "RetryOut",
    "ScanIn",
    "StageOut",
    "ThroughputOut",
    "ThroughputSeriesOut",
    "WorkerCountsOut",
    "WorkerOut",
    "WorkersOut",
]

JobStatusName = Literal["pending", "in_progress", "completed", "failed", "cancelled"]
StageStatusName = Literal["pending", "in_progress", "completed", "failed"]


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
