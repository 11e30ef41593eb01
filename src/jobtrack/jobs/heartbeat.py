"""A worker process's heartbeat: who it is, what it consumes, what it did.

The consumers count each item in an :class:`ItemCounter` as they count it
(in memory, on the loop: no store call per item); a :class:`Heartbeat`
task writes, every ``interval`` seconds, the worker's row and what was
counted since its previous beat (:meth:`~jobtrack.store.base.JobStore.beat_worker`,
one transaction). Beats are numbered: a beat that fails is logged and
written again, with its number and counts, before the next one, so a write
that committed though the worker saw it fail counts nothing twice. The
heartbeat never stops the work. A graceful stop writes a
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

from jobtrack.errors import InvalidRequest, JobtrackError
from jobtrack.model import Clock, utc_now
from jobtrack.store import JobStore, StageCount, WorkerBeat
from jobtrack.store.workers import MAX_WORKER_STAGES, count_problem, worker_name_problem
from jobtrack.tracking.receipt import Outcome, Receipt

__all__ = ["STOP_WAIT", "Heartbeat", "ItemCounter", "new_worker_id"]

logger = logging.getLogger(__name__)

#: Seconds a stopping worker gives its last beat (the one with ``stopped_at``).
STOP_WAIT = 5.0
#: The most job type and stage pairs whose dropped counts are logged.
_DROPS_LOGGED = 1000


def _valid_stages(stages: Sequence[str]) -> tuple[str, ...]:
    """The stage names a store takes in a heartbeat: those it would refuse
    dropped, at most :data:`MAX_WORKER_STAGES` kept (what was left out
    logged once)."""
    kept = tuple(name for name in stages if worker_name_problem(name) is None)
    if len(kept) != len(stages) or len(kept) > MAX_WORKER_STAGES:
        logger.error(
            "a heartbeat names at most %d stages of 1 to 200 characters: %d of %d named",
            MAX_WORKER_STAGES,
            min(len(kept), MAX_WORKER_STAGES),
            len(stages),
            extra={"action": "heartbeat_refused"},
        )
    return kept[:MAX_WORKER_STAGES]


def new_worker_id() -> str:
    """An id for this process as a worker: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class ItemCounter:
    """Items a worker counted: in total since it started, and per job type
    and stage since the last :meth:`take`. Used on the event loop only."""

    __slots__ = (
        "_clock",
        "_pending",
        "_receipts",
        "done",
        "failed",
        "last_error",
        "last_error_at",
    )

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._pending: dict[tuple[str, str], list[int]] = {}
        # Receipts waited for (by Receipt.ident): job type, stage, last error.
        self._receipts: dict[int, tuple[str, str, str | None]] = {}
        self.done = 0
        self.failed = 0
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None

    def count(self, job_type: str, stage: str, *, error: str | None = None) -> None:
        """One item of the stage counted: done, or failed with ``error``."""
        if error is None:
            self.add(job_type, stage, done=1)
        else:
            self.add(job_type, stage, failed=1, error=error)

    def add(
        self, job_type: str, stage: str, *, done: int = 0, failed: int = 0, error: str | None = None
    ) -> None:
        """Items of the stage counted: ``done`` and ``failed``, the last of
        those failed with ``error``."""
        if not (done or failed):
            return
        cell = self._pending.get((job_type, stage))
        if cell is None:
            cell = self._pending[job_type, stage] = [0, 0]
        cell[0] += done
        cell[1] += failed
        self.done += done
        self.failed += failed
        if failed and error is not None:
            self.last_error = error
            self.last_error_at = self._clock()

    def count_receipt(
        self, job_type: str, stage: str, receipt: Receipt, error: str | None = None
    ) -> None:
        """Count the items of ``receipt`` as the store counted them, once its
        outcome is known (:attr:`~jobtrack.tracking.receipt.Outcome.done`,
        ``failed``: none refused, dropped, or counted before, as a redelivered
        item is). Items that share a receipt are counted once for all of
        them, under the job type and stage of the first; ``error`` is the
        item's, kept as the last error if the receipt counts failed items."""
        ident = receipt.ident
        known = self._receipts.get(ident)
        if known is not None:
            if error is not None:
                self._receipts[ident] = (known[0], known[1], error)
            return
        self._receipts[ident] = (job_type, stage, error)
        receipt.when_known(lambda outcome: self._counted(ident, outcome))

    def _counted(self, ident: int, outcome: Outcome) -> None:
        job_type, stage, error = self._receipts.pop(ident)
        self.add(job_type, stage, done=outcome.done, failed=outcome.failed, error=error)

    def take(self) -> list[StageCount]:
        """What was counted since the last call, per job type and stage."""
        pending, self._pending = self._pending, {}
        return [StageCount(t, s, done, failed) for (t, s), (done, failed) in pending.items()]


class Heartbeat:
    """Writes a worker's heartbeat every ``interval`` seconds while
    :meth:`run` runs, and its last one on :meth:`stop`.

    Each beat carries a number (``seq``) and the counts taken for it; a
    beat whose write failed is written again, the same number with the same
    counts, before the next: when the failed write had committed after all
    the store skips it, so no item is counted twice. Counts and stage names
    a store would refuse are dropped (logged once), never kept: a beat that
    can never be written would keep the worker from showing at all.

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
        self.stages = _valid_stages(stages)
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.interval = interval
        self._clock = clock
        self.started_at = clock()
        self.beats = 0  # beats written
        self._seq = 0  # the number of the last beat taken
        self._unsent: tuple[int, list[StageCount]] | None = None  # a beat to write again
        self._dropped: set[tuple[str, str]] = set()  # refused counts, logged once each

    def _make(self, seq: int, stopped_at: datetime | None) -> WorkerBeat:
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
            seq=seq,
        )

    async def beat(self, *, stopping: bool = False) -> bool:
        """Write one beat (the last, with ``stopped_at``, when ``stopping``)
        with what was counted since the previous, after the previous beat
        again when its write failed; whether it was written. A failed write
        is logged and its beat kept, to be written again; never raises but
        for cancellation."""
        if self._unsent is not None and not await self._write(*self._unsent, stopping=False):
            return False
        self._seq += 1
        self._unsent = (self._seq, self._valid(self.counter.take()))
        if not await self._write(*self._unsent, stopping=stopping):
            return False
        self.beats += 1
        return True

    async def _write(self, seq: int, counts: list[StageCount], *, stopping: bool) -> bool:
        """Write beat ``seq`` with ``counts``; forget it once written, or
        refused for good."""
        beat = self._make(seq, self._clock() if stopping else None)
        try:
            await self.store.beat_worker(beat, counts)
        except InvalidRequest as exc:  # never written, however often: dropped
            self._unsent = None
            logger.error(
                "heartbeat %d of worker %s refused by the store, its counts dropped: %s",
                seq,
                self.worker_id,
                exc,
                extra={"action": "heartbeat_refused"},
            )
            return False
        except Exception as exc:
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
        self._unsent = None
        return True

    def _valid(self, counts: list[StageCount]) -> list[StageCount]:
        """``counts`` without those a store would refuse (each job type and
        stage logged the first time)."""
        kept = []
        for count in counts:
            problem = count_problem(count)
            if problem is None:
                kept.append(count)
                continue
            key = (count.job_type, count.stage)
            if key not in self._dropped and len(self._dropped) < _DROPS_LOGGED:
                self._dropped.add(key)
                logger.error(
                    "worker %s drops the throughput of job type %r stage %r: %s",
                    self.worker_id,
                    count.job_type[:100],
                    count.stage[:100],
                    problem,
                    extra={"action": "heartbeat_refused"},
                )
        return kept

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
