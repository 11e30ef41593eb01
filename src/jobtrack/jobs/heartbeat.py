"""A worker process's heartbeat: who it is, what it consumes, what it did.

The consumers count each item in an :class:`ItemCounter` as they count it
(in memory, on the loop: no store call per item); a :class:`Heartbeat`
task writes, every ``interval`` seconds, the worker's row and what was
counted since its previous beat (:meth:`~jobtrack.store.base.JobStore.beat_worker`,
one transaction). A beat that fails is logged and its counts kept for the
next one: the heartbeat never stops the work. A graceful stop writes a
last beat with ``stopped_at``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from datetime import datetime

from jobtrack.errors import JobtrackError
from jobtrack.model import Clock, utc_now
from jobtrack.store import JobStore, StageCount, WorkerBeat

__all__ = ["STOP_WAIT", "Heartbeat", "ItemCounter", "new_worker_id"]

logger = logging.getLogger(__name__)

#: Seconds a stopping worker gives its last beat (the one with ``stopped_at``).
STOP_WAIT = 5.0


def new_worker_id() -> str:
    """An id for this process as a worker: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class ItemCounter:
    """Items a worker counted: in total since it started, and per job type
    and stage since the last :meth:`take`. Used on the event loop only."""

    __slots__ = ("_clock", "_pending", "done", "failed", "last_error", "last_error_at")

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._pending: dict[tuple[str, str], list[int]] = {}
        self.done = 0
        self.failed = 0
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None

    def count(self, job_type: str, stage: str, *, error: str | None = None) -> None:
        """One item of the stage counted: done, or failed with ``error``."""
        cell = self._pending.get((job_type, stage))
        if cell is None:
            cell = self._pending[job_type, stage] = [0, 0]
        if error is None:
            cell[0] += 1
            self.done += 1
        else:
            cell[1] += 1
            self.failed += 1
            self.last_error = error
            self.last_error_at = self._clock()

    def take(self) -> list[StageCount]:
        """What was counted since the last call, per job type and stage."""
        pending, self._pending = self._pending, {}
        return [StageCount(t, s, done, failed) for (t, s), (done, failed) in pending.items()]

    def give_back(self, counts: Sequence[StageCount]) -> None:
        """Counts :meth:`take` gave whose write failed: kept for the next."""
        for count in counts:
            cell = self._pending.setdefault((count.job_type, count.stage), [0, 0])
            cell[0] += count.done
            cell[1] += count.failed


class Heartbeat:
    """Writes a worker's heartbeat every ``interval`` seconds while
    :meth:`run` runs, and its last one on :meth:`stop`.

    :param stages: what the worker consumes (``type/stage`` names).
    :param worker_id: default :func:`new_worker_id`.
    """

    def __init__(
        self,
        store: JobStore,
        counter: ItemCounter,
        *,
        stages: Sequence[str],
        concurrency: int,
        prefetch: int,
        interval: float,
        worker_id: str | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.counter = counter
        self.worker_id = worker_id or new_worker_id()
        self.stages = tuple(stages)
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.interval = interval
        self._clock = clock
        self.started_at = clock()
        self.beats = 0  # beats written

    def _make(self, stopped_at: datetime | None) -> WorkerBeat:
        counter = self.counter
        return WorkerBeat(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            stages=self.stages,
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            interval=self.interval,
            started_at=self.started_at,
            beat_at=stopped_at or self._clock(),
            done=counter.done,
            failed=counter.failed,
            last_error=counter.last_error,
            last_error_at=counter.last_error_at,
            stopped_at=stopped_at,
        )

    async def beat(self, *, stopping: bool = False) -> bool:
        """Write one beat (the last, with ``stopped_at``, when ``stopping``)
        with what was counted since the previous; whether it was written. A
        failed write is logged and its counts kept for the next beat; never
        raises but for cancellation."""
        counts = self.counter.take()
        beat = self._make(self._clock() if stopping else None)
        try:
            await self.store.beat_worker(beat, counts)
        except Exception as exc:
            self.counter.give_back(counts)
            level = logging.WARNING if isinstance(exc, JobtrackError) else logging.ERROR
            logger.log(
                level,
                "heartbeat of worker %s not written: %s",
                self.worker_id,
                exc,
                exc_info=not isinstance(exc, JobtrackError),
                extra={"action": "heartbeat_failed"},
            )
            return False
        except asyncio.CancelledError:
            self.counter.give_back(counts)
            raise
        self.beats += 1
        return True

    async def run(self) -> None:
        """Beat at once, then every ``interval`` seconds, until cancelled."""
        while True:
            await self.beat()
            await asyncio.sleep(self.interval)

    async def stop(self, task: asyncio.Task[None] | None = None) -> None:
        """Cancel the beating ``task`` and write the last beat, with
        ``stopped_at`` (for at most :data:`STOP_WAIT` seconds)."""
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        try:
            await asyncio.wait_for(self.beat(stopping=True), STOP_WAIT)
        except TimeoutError:
            logger.warning(
                "worker %s stopped without its last heartbeat",
                self.worker_id,
                extra={"action": "heartbeat_failed"},
            )

    def start(self) -> asyncio.Task[None]:
        """:meth:`run` as a task of the running loop."""
        return asyncio.create_task(self.run(), name=f"heartbeat {self.worker_id}")
