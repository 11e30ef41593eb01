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
    "QueueOut",
    "QueuesOut",
    "RetryOut",
    "ScanIn",
    "StageOut",
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
    """The dead letters sent back (``requeued``) or dropped."""

    queue: str
    action: Literal["requeued", "dropped"]
    dead_letters: list[DeadLetterOut]
