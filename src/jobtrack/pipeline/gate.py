"""Which jobs' items are still worth doing: a cancelled job's queued items
are acked without work.

Each consumer asks before it renders; the answer is read from the store at
most once per ``ttl`` seconds per job (a cancellation is seen within that),
and a cancelled job stays cancelled, so its answer is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from jobtrack.errors import NotFound, StoreError
from jobtrack.model import JobStatus
from jobtrack.store import JobStore

__all__ = ["JobGate"]


class JobGate:
    """Tells a consumer whether a job was cancelled."""

    def __init__(
        self, store: JobStore, *, ttl: float = 1.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._monotonic = monotonic
        self._seen: dict[str, tuple[float, bool]] = {}  # job id -> (read at, cancelled)

    async def cancelled(self, job_id: str) -> bool:
        """Whether the job was cancelled; False when it cannot be told (an
        unknown job, the store unreachable): the consumer then does the work."""
        now = self._monotonic()
        seen = self._seen.get(job_id)
        if seen is not None and (seen[1] or now - seen[0] < self._ttl):
            return seen[1]
        try:
            job = await self._store.get_job(job_id)
        except (NotFound, StoreError):
            return False
        cancelled = job.status is JobStatus.CANCELLED
        if len(self._seen) > 10_000:  # forget the oldest answers
            for key in list(self._seen)[:5_000]:
                del self._seen[key]
        self._seen[job_id] = (now, cancelled)
        return cancelled
