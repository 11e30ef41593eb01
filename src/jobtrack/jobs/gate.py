"""Which jobs' items are still worth doing: the queued or redelivered items
of a job that has ended (completed, failed or cancelled) are acked without
work.

Each consumer asks before it works; the job is read from the store at most
once per ``ttl`` seconds per job (an end is seen within that), and an ended
job never starts again, so its answer is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from jobtrack.errors import NotFound, StoreError
from jobtrack.model import Job, JobStatus
from jobtrack.store import JobStore

__all__ = ["JobGate"]

_REMEMBERED = 10_000


class JobGate:
    """Tells a consumer whether a job has ended, and how; hands it the job
    as read within ``ttl`` seconds."""

    def __init__(
        self, store: JobStore, *, ttl: float = 1.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._monotonic = monotonic
        self._seen: dict[str, tuple[float, Job]] = {}  # id -> (read at, job)

    async def read(self, job_id: str) -> Job:
        """The job as read from the store within the last ``ttl`` seconds (an
        ended job as it ended, however long ago).

        Raises:
            JobNotFound: no job has that id.
            StoreError: the store cannot be read (``StoreUnavailable``: for now).
        """
        now = self._monotonic()
        seen = self._seen.get(job_id)
        if seen is not None and (seen[1].status.terminal or now - seen[0] < self._ttl):
            return seen[1]
        job = await self._store.get_job(job_id)
        if len(self._seen) > _REMEMBERED:  # forget the oldest answers
            for key in list(self._seen)[: _REMEMBERED // 2]:
                del self._seen[key]
        self._seen[job_id] = (now, job)
        return job

    async def ended(self, job_id: str) -> JobStatus | None:
        """The job's terminal status (completed, failed or cancelled), or None
        while it runs or when it cannot be told (an unknown job, the store
        unreachable): the consumer then does the work. Never raises."""
        try:
            job = await self.read(job_id)
        except (NotFound, StoreError):
            return None
        return job.status if job.status.terminal else None
