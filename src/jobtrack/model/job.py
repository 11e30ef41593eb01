"""Job and Stage: immutable snapshots of what the store holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobtrack.model.status import JobStatus, StageStatus

__all__ = [
    "RESERVED_ATTRIBUTES",
    "Job",
    "JobEvent",
    "Stage",
    "StageCounts",
]


@dataclass(frozen=True, slots=True)
class Stage:
    """One named phase of a job and its item counts."""

    name: str
    status: StageStatus = StageStatus.PENDING
    total_items: int = 0
    completed_items: int = 0
    failed_items: int = 0
    total_final: bool = False
    message: str = ""
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def done_items(self) -> int:
        """Items counted either way, completed or failed."""
        return self.completed_items + self.failed_items

    def to_dict(self) -> dict[str, Any]:
        """The stage as in the JSON contract."""
        return {
            "status": self.status.value,
            "total_items": self.total_items,
            "completed_items": self.completed_items,
            "failed_items": self.failed_items,
            "total_final": self.total_final,
            "message": self.message,
            "started_at": _iso(self.started_at),
            "completed_at": _iso(self.completed_at),
        }


@dataclass(frozen=True, slots=True)
class StageCounts:
    """What a reconciler found for one stage: the ground truth."""

    total_items: int
    completed_items: int
    failed_items: int
    total_final: bool = True


#: Keys of the job's JSON that attributes may not shadow.
RESERVED_ATTRIBUTES = frozenset(
    {
        "id",
        "job_type",
        "status",
        "created_at",
        "updated_at",
        "completed_at",
        "message",
        "seq",
        "stages",
    }
)


@dataclass(frozen=True, slots=True)
class Job:
    """One user-visible piece of work, made of ordered stages.

    ``attributes`` carries what the job is about (for a collection scan,
    ``{"collection": {"id": ..., "path": ...}}``); it is shown at the top
    level of the job's JSON. ``seq`` orders the job's writes among every
    job's (see :class:`~jobtrack.store.base.ChangeCursor`).
    """

    id: str
    job_type: str
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    stages: Mapping[str, Stage]
    attributes: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""
    completed_at: datetime | None = None
    #: The job's last write in the store's change sequence: every write takes
    #: a higher one (the change feed's order, the monitor's compare-and-set).
    seq: int = 0

    def stage(self, name: str) -> Stage:
        """The stage called ``name``; KeyError if the job has none."""
        return self.stages[name]

    def to_dict(self) -> dict[str, Any]:
        """The job as in the JSON contract (CLI ``--json`` and HTTP API)."""
        data: dict[str, Any] = {
            "id": self.id,
            "job_type": self.job_type,
            "status": self.status.value,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "completed_at": _iso(self.completed_at),
            "message": self.message,
            "seq": self.seq,
            "stages": {name: stage.to_dict() for name, stage in self.stages.items()},
        }
        data.update(self.attributes)
        return data


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One entry of a job's history: reconciled, re-driven, failed…"""

    job_id: str
    at: datetime
    kind: str
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The event as in the JSON contract."""
        return {
            "id": self.id,
            "at": _iso(self.at),
            "kind": self.kind,
            "message": self.message,
            "data": dict(self.data),
        }
