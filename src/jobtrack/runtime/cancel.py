"""Cancelling a job: the one service behind ``jobtrack jobs cancel`` and
``POST /api/jobs/{id}/cancel``.

A cancel is one atomic write guarded by the job's status alone
(:meth:`~jobtrack.store.JobStore.end_job_if_active`): a job being written
all the time (a walking scan raising its totals, workers flushing progress)
is cancelled at once, not refused for having moved. The store says whether
this call ended the job, so the answer is always what really happened:
``cancelled`` (and one ``cancelled`` event is recorded), or ``ended`` (it
had already ended, as completed, failed or cancelled: nothing is written).
Of two cancels racing, exactly one answers ``cancelled``. The scan that runs
the job notices the cancel and stops its walk
(:class:`~jobtrack.pipeline.scanner.Scanner`); its queued items are acked
without work (:class:`~jobtrack.jobs.gate.JobGate`).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

from jobtrack.errors import JobtrackError
from jobtrack.model import Job, JobStatus
from jobtrack.store import JobStore

__all__ = ["CancelOutcome", "CancelResult", "cancel_job"]

logger = logging.getLogger(__name__)


class CancelOutcome(enum.StrEnum):
    """What a cancel did."""

    CANCELLED = "cancelled"
    ENDED = "ended"  # it had already ended: left as it was


@dataclass(frozen=True, slots=True)
class CancelResult:
    """The outcome, and the job as it is after the call."""

    outcome: CancelOutcome
    job: Job

    @property
    def cancelled(self) -> bool:
        """Whether this call cancelled the job."""
        return self.outcome is CancelOutcome.CANCELLED

    def describe(self) -> str:
        """One line for a person: what happened to the job."""
        if self.outcome is CancelOutcome.CANCELLED:
            return f"job {self.job.id} cancelled"
        return f"job {self.job.id} had already ended: {self.job.status.value}"

    def to_dict(self) -> dict[str, Any]:
        """The answer as JSON, the same from the command line and the API:
        ``outcome``, ``cancelled``, ``ended_as`` (the status it had ended
        with, or None), ``message`` and the ``job``."""
        return {
            "outcome": self.outcome.value,
            "cancelled": self.cancelled,
            "ended_as": self.job.status.value if self.outcome is CancelOutcome.ENDED else None,
            "message": self.describe(),
            "job": self.job.to_dict(),
        }


async def cancel_job(store: JobStore, job_id: str, *, message: str, source: str) -> CancelResult:
    """Cancel the job unless it has ended, and say what happened.

    ``message`` becomes the job's message and the ``cancelled`` event's;
    ``source`` (``cli``, ``api``) is recorded in the event's data. The event
    is recorded only by the call that cancelled the job; when recording it
    fails, the failure is logged and the answer is still ``cancelled`` (the
    job is). Raises :class:`~jobtrack.errors.JobNotFound` for an unknown job
    and :class:`~jobtrack.errors.StoreError` when the store cannot be
    reached.
    """
    job, changed = await store.end_job_if_active(job_id, JobStatus.CANCELLED, message=message)
    if not changed:
        return CancelResult(CancelOutcome.ENDED, job)
    try:
        await store.add_event(job_id, "cancelled", message, {"source": source})
    except JobtrackError as exc:
        logger.warning(
            "job %s cancelled, but its cancelled event was not recorded: %s",
            job_id,
            str(exc)[:500],
            extra={"action": "cancel_event_lost", "job_id": job_id},
        )
    return CancelResult(CancelOutcome.CANCELLED, job)
