"""Cancelling a job: the one service behind ``jobtrack jobs cancel`` and
``POST /api/jobs/{id}/cancel``.

A cancel is a compare-and-set: the job is read, then ended as cancelled only
if nothing wrote to it since (``end_job(if_updated_at=…)``). So the answer is
always what really happened: ``cancelled`` (and one ``cancelled`` event is
recorded), ``ended`` (it had already ended, as completed, failed or
cancelled: nothing is written), or ``busy`` (it was written between the read
and the write on every one of a bounded number of tries: nothing is written,
the caller may try again). The scan that runs the job notices the cancel
and stops its walk (:class:`~jobtrack.pipeline.scanner.Scanner`); its queued
items are acked without work (:class:`~jobtrack.pipeline.gate.JobGate`).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Any

from jobtrack.errors import Conflict
from jobtrack.model import Job, JobStatus
from jobtrack.store import JobStore

__all__ = ["CANCEL_ATTEMPTS", "CancelOutcome", "CancelResult", "cancel_job"]

#: Tries before a job written all the time is reported busy.
CANCEL_ATTEMPTS = 5


class CancelOutcome(enum.StrEnum):
    """What a cancel did."""

    CANCELLED = "cancelled"
    ENDED = "ended"  # it had already ended: left as it was
    BUSY = "busy"  # written during every try: left running


@dataclass(frozen=True, slots=True)
class CancelResult:
    """The outcome, the job as it is after the call, and the tries it took."""

    outcome: CancelOutcome
    job: Job
    attempts: int

    @property
    def cancelled(self) -> bool:
        """Whether this call cancelled the job."""
        return self.outcome is CancelOutcome.CANCELLED

    def describe(self) -> str:
        """One line for a person: what happened to the job."""
        if self.outcome is CancelOutcome.CANCELLED:
            return f"job {self.job.id} cancelled"
        if self.outcome is CancelOutcome.ENDED:
            return f"job {self.job.id} had already ended: {self.job.status.value}"
        return (
            f"job {self.job.id} was written during each of {self.attempts} tries to cancel it:"
            " not cancelled, try again"
        )

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


async def cancel_job(
    store: JobStore,
    job_id: str,
    *,
    message: str,
    source: str,
    attempts: int = CANCEL_ATTEMPTS,
    backoff: float = 0.02,
) -> CancelResult:
    """Cancel the job unless it has ended, and say what happened.

    ``message`` becomes the job's message and the ``cancelled`` event's;
    ``source`` (``cli``, ``api``) is recorded in the event's data. A job
    written between the read and the write is read again, up to ``attempts``
    times, ``backoff * 2**n`` seconds apart. Raises
    :class:`~jobtrack.errors.JobNotFound` for an unknown job and
    :class:`~jobtrack.errors.StoreError` when the store cannot be reached.
    """
    for attempt in range(1, attempts + 1):
        before = await store.get_job(job_id)
        if before.status.terminal:
            return CancelResult(CancelOutcome.ENDED, before, attempt)
        try:
            after = await store.end_job(
                job_id, JobStatus.CANCELLED, message=message, if_updated_at=before.updated_at
            )
        except Conflict:  # written meanwhile (an increment, or another end): again
            if attempt < attempts and backoff > 0:
                await asyncio.sleep(backoff * 2 ** (attempt - 1))
            continue
        await store.add_event(job_id, "cancelled", message, {"source": source})
        return CancelResult(CancelOutcome.CANCELLED, after, attempt)
    now = await store.get_job(job_id)
    outcome = CancelOutcome.ENDED if now.status.terminal else CancelOutcome.BUSY
    return CancelResult(outcome, now, attempts)
