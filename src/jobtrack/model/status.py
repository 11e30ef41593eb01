"""Job and stage statuses, exactly as stored and as shown in JSON."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ACTIVE_JOB_STATUSES", "JobStatus", "StageStatus"]


class JobStatus(StrEnum):
    """Where a job stands; the three last ones are terminal."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once the job can no longer change by itself."""
        return self in _TERMINAL_JOB


class StageStatus(StrEnum):
    """Where a stage stands; completed and failed are terminal."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        """True once every item of the stage has been counted."""
        return self in (StageStatus.COMPLETED, StageStatus.FAILED)


_TERMINAL_JOB = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

#: The statuses the stuck-job query looks at.
ACTIVE_JOB_STATUSES: tuple[JobStatus, ...] = (JobStatus.PENDING, JobStatus.IN_PROGRESS)
