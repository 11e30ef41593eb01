"""The transition rules, as pure functions over immutable snapshots.

Every store applies these same rules inside its own atomic statement (SQL
``CASE`` expressions, a MongoDB update pipeline); the in-memory store calls
them directly, and the contract suite checks each backend against them.

- A stage starts on its first counted item (or when started explicitly).
- A stage completes when its total is final and completed + failed reach it.
- A stage whose items all failed is failed.
- A terminal stage counts nothing more: a late duplicate cannot push it past
  its total.
- The job's status is derived from its stages: completed when every stage is,
  failed when every stage is terminal and one of them failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from jobtrack.errors import InvalidIncrement, InvalidRequest
from jobtrack.model.job import Stage, StageCounts
from jobtrack.model.status import JobStatus, StageStatus

__all__ = [
    "MAX_INCREMENT",
    "apply_increment",
    "check_increment",
    "default_completed",
    "derive_job_status",
    "derive_stage_status",
    "raise_total",
    "seal_total",
    "set_counts",
    "start_stage",
]

#: The largest single increment accepted; anything above is a bug upstream.
MAX_INCREMENT = 1_000_000


def default_completed(completed: int | None, failed: int) -> int:
    """An increment counts one completed item unless told otherwise."""
    if completed is None:
        return 0 if failed else 1
    return completed


def check_increment(completed: int, failed: int) -> None:
    """Refuse negative, empty and absurd increments."""
    if completed < 0 or failed < 0:
        raise InvalidIncrement(
            f"increment must not be negative (completed={completed}, failed={failed})"
        )
    if completed + failed == 0:
        raise InvalidIncrement("increment must count at least one item")
    if completed + failed > MAX_INCREMENT:
        raise InvalidIncrement(f"increment of {completed + failed} items exceeds {MAX_INCREMENT}")


def derive_stage_status(
    *, total: int, completed: int, failed: int, total_final: bool, started: bool
) -> StageStatus:
    """The status a stage with these counts is in."""
    if total_final and completed + failed >= total:
        if total > 0 and completed == 0:
            return StageStatus.FAILED
        return StageStatus.COMPLETED
    if started or completed + failed > 0:
        return StageStatus.IN_PROGRESS
    return StageStatus.PENDING


def _settle(stage: Stage, now: datetime, *, started: bool) -> Stage:
    status = derive_stage_status(
        total=stage.total_items,
        completed=stage.completed_items,
        failed=stage.failed_items,
        total_final=stage.total_final,
        started=started,
    )
    started_at = stage.started_at
    if status is not StageStatus.PENDING and started_at is None:
        started_at = now
    completed_at = stage.completed_at if status.terminal else None
    if status.terminal and completed_at is None:
        completed_at = now
    return replace(stage, status=status, started_at=started_at, completed_at=completed_at)


def apply_increment(stage: Stage, now: datetime, *, completed: int, failed: int) -> Stage | None:
    """Count ``completed`` and ``failed`` items; None when the stage is
    already terminal and so counts nothing."""
    check_increment(completed, failed)
    if stage.status.terminal:
        return None
    counted = replace(
        stage,
        completed_items=stage.completed_items + completed,
        failed_items=stage.failed_items + failed,
    )
    return _settle(counted, now, started=True)


def raise_total(stage: Stage, now: datetime, *, by: int) -> Stage:
    """Add ``by`` items to a stage's total; refused once the total is sealed."""
    if by < 0:
        raise InvalidRequest(f"a total can only be raised, not lowered by {-by}")
    if stage.total_final:
        raise InvalidRequest(f"the total of stage {stage.name!r} is sealed")
    raised = replace(stage, total_items=stage.total_items + by)
    return _settle(raised, now, started=stage.status is not StageStatus.PENDING)


def seal_total(stage: Stage, now: datetime, *, total: int | None = None) -> Stage:
    """Declare the stage's total final (optionally setting it); the stage may
    complete right away if its items are already all counted. Sealing again
    is allowed only without changing the total."""
    if total is not None and total < 0:
        raise InvalidRequest(f"a total cannot be negative ({total})")
    if stage.total_final:
        if total is not None and total != stage.total_items:
            raise InvalidRequest(
                f"the total of stage {stage.name!r} is sealed at {stage.total_items}"
            )
        return stage
    sealed = replace(
        stage,
        total_items=stage.total_items if total is None else total,
        total_final=True,
    )
    return _settle(sealed, now, started=stage.status is not StageStatus.PENDING)


def start_stage(stage: Stage, now: datetime, *, message: str | None = None) -> Stage:
    """Mark a pending stage as started, e.g. the scan stage as the walk begins."""
    started = stage if message is None else replace(stage, message=message)
    return _settle(started, now, started=True)


def set_counts(stage: Stage, now: datetime, counts: StageCounts) -> Stage:
    """Set the counts to what the ground truth shows, up or down."""
    for value in (counts.total_items, counts.completed_items, counts.failed_items):
        if value < 0:
            raise InvalidRequest(f"counts cannot be negative ({counts})")
    reset = replace(
        stage,
        total_items=counts.total_items,
        completed_items=counts.completed_items,
        failed_items=counts.failed_items,
        total_final=counts.total_final,
    )
    return _settle(reset, now, started=stage.status is not StageStatus.PENDING)


def derive_job_status(current: JobStatus, stages: Iterable[StageStatus]) -> JobStatus:
    """The job's status given its stages; a terminal job stays as it is."""
    if current.terminal:
        return current
    statuses = list(stages)
    if all(s is StageStatus.COMPLETED for s in statuses):
        return JobStatus.COMPLETED
    if all(s.terminal for s in statuses):
        return JobStatus.FAILED
    if current is JobStatus.IN_PROGRESS or any(s is not StageStatus.PENDING for s in statuses):
        return JobStatus.IN_PROGRESS
    return JobStatus.PENDING
