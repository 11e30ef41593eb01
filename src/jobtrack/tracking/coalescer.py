"""Coalesced progress writes: fold items in memory, write them per flush.

Every item reported between two flushes is folded into its (job, stage):
counts add up, item keys gather in an ordered set. A flush writes all of
them with one :meth:`~jobtrack.store.base.JobStore.add_progress` call (one
statement on PostgreSQL, one transaction on SQLite), which deduplicates the
keys against what the store already counted. So a hot job costs the store
one write per flush, whatever the item rate, and stays exact.

A flush happens every ``flush_interval`` seconds, or as soon as
``max_batch`` items wait. Each item's :class:`Receipt` resolves when its
flush is durable. While the store is unavailable, items stay folded (at
most ``max_pending``; past that, new ones are dropped and left to
reconciliation) and flushes back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from jobtrack.errors import StoreUnavailable
from jobtrack.store.base import JobStore, ProgressResult, StageProgress
from jobtrack.tracking.progress_log import ProgressLog
from jobtrack.tracking.stats import WRITE_STATS

__all__ = ["Coalescer", "Receipt"]

logger = logging.getLogger("jobtrack.tracking")


class Receipt:
    """Resolves to True once an item's progress is durable in the store, or
    to False when it was refused or dropped. Await it, or :meth:`wait`."""

    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future[bool]) -> None:
        self._future = future

    @classmethod
    def resolved(cls, durable: bool) -> Receipt:
        """A receipt already settled."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        future.set_result(durable)
        return cls(future)

    def done(self) -> bool:
        """Whether the outcome is known."""
        return self._future.done()

    def add_done_callback(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(durable)`` once the outcome is known."""
        self._future.add_done_callback(lambda future: callback(future.result()))

    async def wait(self, within: float | None = None) -> bool:
        """The outcome; False if it is not known within ``within`` seconds."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._future), within)
        except TimeoutError:
            return False

    def __await__(self) -> Generator[Any, None, bool]:
        return asyncio.shield(self._future).__await__()


@dataclass(slots=True)
class _Fold:
    """One stage's items since the last flush, and who waits for them."""

    waiters: list[asyncio.Future[bool]]
    completed: int = 0
    failed: int = 0
    completed_keys: dict[str, None] = field(default_factory=dict)
    failed_keys: dict[str, None] = field(default_factory=dict)

    def merge(self, older: _Fold) -> None:
        self.completed += older.completed
        self.failed += older.failed
        self.completed_keys = {**older.completed_keys, **self.completed_keys}
        self.failed_keys = {**older.failed_keys, **self.failed_keys}
        self.waiters = older.waiters + self.waiters

    def settle(self, *, durable: bool) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(durable)


class Coalescer:
    """Folds reported items and flushes them to the store in the background."""

    def __init__(
        self,
        store: JobStore,
        progress_log: ProgressLog,
        *,
        flush_interval: float = 0.1,
        max_batch: int = 50_000,
        max_pending: int = 1_000_000,
        retry_after: float = 0.5,
        max_retry_after: float = 30.0,
    ) -> None:
        self._store = store
        self._log = progress_log
        self._interval = flush_interval
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._retry_after = retry_after
        self._max_retry_after = max_retry_after
        self._backoff = 0.0
        self._folds: dict[tuple[str, str], _Fold] = {}
        self._items = 0
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.dropped = 0
        self.flushes = 0

    @property
    def pending(self) -> int:
        """Items reported and not yet durable."""
        return self._items

    @property
    def backing_off(self) -> bool:
        """True while the store was unavailable at the last flush."""
        return self._backoff > 0

    def add(self, job_id: str, stage: str, *, item_key: str | None, failed: bool) -> Receipt:
        """Fold one item in; never blocks, never raises."""
        if self._items >= self._max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                logger.warning(
                    "%d progress items wait for the store; dropping new ones (%d so far), "
                    "reconciliation will count them",
                    self._items,
                    self.dropped,
                    extra={"action": "progress_dropped"},
                )
            return Receipt.resolved(False)
        fold = self._folds.get((job_id, stage))
        if fold is None:
            future = asyncio.get_running_loop().create_future()
            fold = self._folds[(job_id, stage)] = _Fold([future])
        if item_key is None:
            if failed:
                fold.failed += 1
            else:
                fold.completed += 1
        elif failed:
            fold.failed_keys[item_key] = None
        else:
            fold.completed_keys[item_key] = None
        self._items += 1
        self._start()
        if self._items >= self._max_batch and not self._backoff:
            self._wake.set()  # a full batch goes now, unless the store is backing us off
        return Receipt(fold.waiters[-1])

    async def flush(self) -> bool:
        """Write what is folded now; False if the store could not take it."""
        async with self._flushing:
            return await self._flush_once()

    async def aclose(self, *, max_wait: float) -> bool:
        """Flush (retrying until ``max_wait`` passes), then stop the background task."""
        deadline = time.monotonic() + max_wait
        flushed = await self.flush()
        while not flushed and time.monotonic() < deadline:
            await asyncio.sleep(min(self._backoff or self._retry_after, 1.0))
            flushed = await self.flush()
        if self._task is not None:
            # Stopped by a flag, not by cancel(): before Python 3.12 a cancel
            # can be swallowed by the loop's wait_for, and the task would run on.
            self._stopping = True
            self._wake.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for fold in self._folds.values():
            fold.settle(durable=False)
        if not flushed:
            logger.warning(
                "%d progress items not written; reconciliation will count them",
                self._items,
                extra={"action": "progress_pending"},
            )
        return flushed

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="jobtrack-progress-flush"
            )

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._backoff or self._interval)
            self._wake.clear()
            await self.flush()

    async def _flush_once(self) -> bool:
        if not self._folds:
            return True
        folds, items = self._folds, self._items
        self._folds, self._items = {}, 0
        batch = [
            StageProgress(
                job_id,
                stage,
                fold.completed,
                fold.failed,
                tuple(fold.completed_keys),
                tuple(fold.failed_keys),
            )
            for (job_id, stage), fold in folds.items()
        ]
        started = time.perf_counter()
        try:
            results = await self._store.add_progress(batch)
        except StoreUnavailable as exc:
            WRITE_STATS.failed()
            self._keep(folds, items, exc)
            return False
        except asyncio.CancelledError:
            self._restore(folds, items)  # the write may or may not have happened: keys make it safe
            raise
        except Exception:  # nothing a retry can mend; never the consumer's problem
            logger.exception(
                "%d progress items refused by the store; reconciliation will count them",
                items,
                extra={"action": "progress_refused"},
            )
            for fold in folds.values():
                fold.settle(durable=False)
            return True
        WRITE_STATS.record(time.perf_counter() - started, items)
        self._backoff = 0.0
        self.flushes += 1
        for fold, result in zip(folds.values(), results, strict=True):
            fold.settle(durable=result.stage is not None)
        self._report(results)
        return True

    def _keep(
        self,
        folds: dict[tuple[str, str], _Fold],
        items: int,
        exc: Exception,
    ) -> None:
        """Put a batch the store could not take back in front of newer items."""
        self._restore(folds, items)
        self._backoff = min(max(self._backoff * 2, self._retry_after), self._max_retry_after)
        logger.warning(
            "progress flush failed (%d items kept, next try in %.1f s): %s",
            self._items,
            self._backoff,
            exc,
            extra={"action": "progress_write_failed"},
        )

    def _restore(self, folds: dict[tuple[str, str], _Fold], items: int) -> None:
        for key, older in folds.items():
            newer = self._folds.get(key)
            if newer is None:
                self._folds[key] = older
            else:
                newer.merge(older)
        self._items += items

    def _report(self, results: list[ProgressResult]) -> None:
        for result in results:
            if result.stage is None:
                logger.warning(
                    "progress not recorded: %s",
                    result.refused,
                    extra={"action": "progress_refused"},
                )
            elif result.counted:
                self._log.counted(result.progress.job_id, result.stage, result.counted)
