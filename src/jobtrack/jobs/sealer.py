"""Sealing discovered stages as their feeders complete, debounced per job.

After an item of a stage that feeds others has counted, the consumer
:meth:`~Sealer.poke`\\ s the sealer; the first poke of a job checks at once
(:func:`~jobtrack.jobs.sealing.seal_ready`), the pokes that come while a
check runs or within ``interval`` after it make one more check, so a hot job
is read at most once per ``interval`` and the last item of a burst is
always followed by a check. An unreachable store is tried again with
backoff until the check goes through.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from jobtrack.broker.base import clip
from jobtrack.errors import NotFound, StoreError
from jobtrack.jobs.sealing import seal_ready
from jobtrack.jobs.types import JobType
from jobtrack.store import JobStore

__all__ = ["Sealer"]

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    job_type: JobType
    again: bool = False


class Sealer:
    """Seals the discovered stages of jobs that are ready, at most once per
    ``interval`` seconds per job."""

    def __init__(self, store: JobStore, *, interval: float = 0.1, retry_delay: float = 0.2) -> None:
        self._store = store
        self._interval = interval
        self._retry_delay = retry_delay
        self._pending: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.checks = 0
        """Checks made so far (each reads the job once at least)."""

    def poke(self, job_type: JobType, job_id: str) -> None:
        """An item of ``job_id`` has counted: check its discovered stages
        soon. Returns at once; never raises."""
        pending = self._pending.get(job_id)
        if pending is not None:
            pending.again = True
            return
        self._pending[job_id] = _Pending(job_type)
        task = asyncio.get_running_loop().create_task(self._check(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def idle(self) -> bool:
        """Whether no check is due or running."""
        return not self._pending

    async def drain(self, *, within: float | None = None) -> bool:
        """Wait for the checks due (and those they lead to); True if all were
        made within ``within`` seconds (None: as long as it takes)."""
        try:
            async with asyncio.timeout(within):
                while self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Stop the checks still running (their jobs are checked by the next
        item counted, or by the monitor)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pending.clear()

    async def _check(self, job_id: str) -> None:
        pending = self._pending[job_id]
        delay = self._retry_delay
        try:
            while True:
                pending.again = False
                try:
                    self.checks += 1
                    await seal_ready(self._store, pending.job_type, job_id)
                except NotFound:
                    return
                except StoreError as exc:
                    logger.warning(
                        "cannot seal the stages of job %s now (%s); trying again in %.1f s",
                        job_id,
                        clip(str(exc)),
                        delay,
                        extra={"action": "store_unavailable", "job_id": job_id},
                    )
                    pending.again = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                except Exception:  # a bug: say so, leave the job to the next item
                    logger.exception(
                        "sealing the stages of job %s failed",
                        job_id,
                        extra={"action": "seal_failed", "job_id": job_id},
                    )
                    return
                delay = self._retry_delay
                await asyncio.sleep(self._interval)
                if not pending.again:
                    return
        finally:
            del self._pending[job_id]
