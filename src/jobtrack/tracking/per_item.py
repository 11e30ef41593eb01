"""Per-item progress writes: one store write per finished item, as the seed
describes.

A write that fails is kept and retried with backoff, by a background task
of the writer's own, for as long as it takes (until :meth:`PerItemWriter.aclose`).
It is refused for good, logged and dropped, only for its own fault: an
error about its data (an unknown job or stage, a value the store cannot
hold: :class:`~jobtrack.errors.NotFound`, :class:`~jobtrack.errors.InvalidRequest`),
or a store error again on a retry while other writes went through since its
last try. Any other failure (the store unavailable, read-only, refusing
every write) is the store's: the item is kept. An increment may carry a
waiter: it resolves once the item is durable (after retries, if need be),
refused (with the store's reason), or dropped past the bound or left
unwritten at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from jobtrack.errors import InvalidRequest, NotFound, StoreUnavailable
from jobtrack.store.base import JobStore
from jobtrack.tracking.progress_log import ProgressLog
from jobtrack.tracking.receipt import NOT_WRITTEN, Outcome
from jobtrack.tracking.stats import WRITE_STATS

__all__ = ["PendingIncrement", "PerItemWriter"]

logger = logging.getLogger("jobtrack.tracking")


class _Outcome(Enum):
    RECORDED = "recorded"  # the store has the item (or had it already)
    KEPT = "kept"  # not written, for the store's fault (maybe): to keep for retry
    REFUSED = "refused"  # the store will never take it: logged and dropped


@dataclass(frozen=True, slots=True)
class PendingIncrement:
    """An increment to write, or that the store could not take yet; its
    ``waiter``, if any, learns the item's fate."""

    job_id: str
    stage: str
    item_key: str | None
    failed: bool
    waiter: asyncio.Future[Outcome] | None = field(default=None, compare=False)

    def settle(self, outcome: Outcome) -> None:
        """Tell the waiter, if there is one still waiting."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(outcome)


class PerItemWriter:
    """Writes each item as it is reported; keeps what the store cannot take yet
    and retries it in the background.

    :param max_pending: how many failed writes to keep for retry; past it the
        oldest are dropped (and left to reconciliation), so memory stays bounded.
    """

    def __init__(
        self,
        store: JobStore,
        progress_log: ProgressLog,
        *,
        max_pending: int = 100_000,
        retry_after: float = 0.5,
        max_retry_after: float = 30.0,
    ) -> None:
        self._store = store
        self._log = progress_log
        # each kept item with the count of writes done when it last failed
        self._pending: deque[tuple[PendingIncrement, int]] = deque(maxlen=max_pending)
        self._retry_after = retry_after
        self._max_retry_after = max_retry_after
        self._backoff = retry_after
        self._next_retry = 0.0
        self._retrying = asyncio.Lock()
        # Writes numbered as they start, and the newest number that went
        # through: an item's fault is told by a write started after it failed.
        self._started = 0
        self._succeeded = -1
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Increments waiting for the store to come back."""
        return len(self._pending)

    async def increment(self, item: PendingIncrement) -> bool:
        """Write one item (after any kept ones whose retry is due); True once
        recorded. A failed write is kept and retried in the background."""
        await self.retry_if_due()
        outcome, error = await self._write(item)
        if outcome is _Outcome.KEPT:
            assert error is not None
            self._keep(item, error, front=False)
        return outcome is _Outcome.RECORDED

    async def retry_if_due(self) -> int:
        """Retry the kept increments if the backoff allows; returns how many remain."""
        if self._pending and time.monotonic() >= self._next_retry:
            return await self.retry_pending()
        return len(self._pending)

    async def retry_pending(self) -> int:
        """Try the kept increments again, oldest first; returns how many remain.

        One retrier at a time: each item is taken off the queue before its
        write, and put back at the front if the store still fails it. An
        item failing again with a store error while a write started after
        its last failure went through is refused (a write begun before it
        and finished after proves nothing: the store may have changed); with none, the next item is
        tried too, to tell the item's fault (that one is written) from the
        store's (it fails as well: both are kept, and the retries back off).
        """
        async with self._retrying:
            suspect: tuple[PendingIncrement, Exception] | None = None
            while self._pending:
                item, written = self._pending.popleft()
                outcome, error = await self._write(item)
                if outcome is _Outcome.RECORDED and suspect is not None:
                    self._refuse(*suspect)
                    suspect = None
                if outcome is not _Outcome.KEPT:
                    continue
                assert error is not None
                if not isinstance(error, StoreUnavailable):
                    if self._succeeded >= written:  # a write started since its failure went through
                        self._refuse(item, error)
                        continue
                    if suspect is None and self._pending:
                        suspect = (item, error)  # try the next one to tell whose fault
                        continue
                self._keep(item, error, front=True)
                if suspect is not None:
                    self._keep(*suspect, front=True)
                return self._failed_retry()
            if suspect is not None:
                self._keep(*suspect, front=True)
                return self._failed_retry()
            self._backoff = self._retry_after
            return 0

    async def flush(self, *, max_wait: float) -> bool:
        """Retry kept increments until none remain or ``max_wait`` seconds pass."""
        deadline = time.monotonic() + max_wait
        while self._pending:
            if await self.retry_pending() == 0:
                break
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(self._backoff, max(deadline - time.monotonic(), 0.0)))
        return True

    async def aclose(self, *, max_wait: float) -> bool:
        """Flush (retrying until ``max_wait`` passes), then stop the background
        retries; the waiters of what is still kept learn it was not written
        (the items stay kept, should the writer be used again). Returns
        whether everything was written."""
        flushed = await self.flush(max_wait=max_wait)
        if self._task is not None:
            # Stopped by a flag, not by cancel(), as the coalescer's task is.
            self._stopping = True
            self._wake.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for item, _ in self._pending:
            item.settle(NOT_WRITTEN)
        if not flushed:
            logger.warning(
                "%d progress writes not done; reconciliation will count them",
                len(self._pending),
                extra={"action": "progress_pending"},
            )
        return flushed

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._stopping = False
            self._wake.clear()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="jobtrack-progress-retry"
            )

    async def _run(self) -> None:
        """Retry the kept items when their backoff is over, until none is left."""
        while self._pending and not self._stopping:
            delay = max(self._next_retry - time.monotonic(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            if self._stopping:
                return
            await self.retry_if_due()

    def _failed_retry(self) -> int:
        """Back off after a retry the store failed; returns what is kept."""
        self._backoff = min(max(self._backoff * 2, _MIN_RETRY_AFTER), self._max_retry_after)
        self._next_retry = time.monotonic() + self._backoff
        return len(self._pending)

    async def _write(self, item: PendingIncrement) -> tuple[_Outcome, Exception | None]:
        """Write one item; settles its waiter unless the outcome is KEPT
        (then the error is returned, for the caller to keep the item)."""
        started = time.perf_counter()
        number, self._started = self._started, self._started + 1
        try:
            result = await self._store.increment(
                item.job_id,
                item.stage,
                completed=0 if item.failed else 1,
                failed=1 if item.failed else 0,
                item_key=item.item_key,
            )
            WRITE_STATS.record(time.perf_counter() - started, 1)
        except (NotFound, InvalidRequest) as exc:
            logger.warning("progress not recorded: %s", exc, extra={"action": "progress_refused"})
            item.settle(Outcome.refusal(str(exc)))
            return _Outcome.REFUSED, None
        except Exception as exc:  # the store's fault, or maybe the item's: kept
            WRITE_STATS.failed()
            return _Outcome.KEPT, exc
        self._succeeded = max(self._succeeded, number)
        counted = int(result.counted)
        item.settle(Outcome(True, done=0 if item.failed else counted, failed=counted * item.failed))
        if result.counted:
            self._log.counted(item.job_id, result.stage, 1)
        return _Outcome.RECORDED, None

    def _refuse(self, item: PendingIncrement, exc: Exception) -> None:
        """Drop an item whose write fails on its own while others go through."""
        logger.error(
            "progress write for job %r stage %r refused (%s) while other writes go "
            "through; reconciliation will count it",
            item.job_id[:100],
            item.stage[:100],
            exc,
            exc_info=exc,
            extra={"action": "progress_refused", "job_id": item.job_id},
        )
        item.settle(Outcome.refusal(str(exc) or type(exc).__name__))

    def _keep(self, item: PendingIncrement, exc: Exception, *, front: bool) -> None:
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
            # the deque drops the far end to make room: that item is not written
            (self._pending[-1] if front else self._pending[0])[0].settle(NOT_WRITTEN)
            logger.warning(
                "%d progress writes kept for retry; dropping one (reconciliation will count it)",
                len(self._pending),
                extra={"action": "progress_dropped"},
            )
        if not self._pending:
            self._next_retry = time.monotonic() + self._backoff
        if front:
            self._pending.appendleft((item, self._started))
        else:
            self._pending.append((item, self._started))
        self._start()
        logger.warning(
            "progress write failed for job %s stage %s (%d pending), will retry: %s",
            item.job_id,
            item.stage,
            len(self._pending),
            exc,
            extra={"action": "progress_write_failed", "job_id": item.job_id},
        )


#: The shortest wait after a failed retry, however small ``retry_after`` is.
_MIN_RETRY_AFTER = 0.01
