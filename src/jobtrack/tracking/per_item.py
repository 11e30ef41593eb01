"""Per-item progress writes: one store write per finished item, as the seed
describes. A write that fails because the store is unavailable is kept and
retried with backoff; a write the store refuses for good is logged and
dropped, since retrying it could never succeed. An increment may carry a
waiter: it resolves once the item is durable (after retries, if need be),
refused (with the store's reason), or dropped past the bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from jobtrack.errors import InvalidRequest, NotFound, StoreUnavailable
from jobtrack.store.base import JobStore
from jobtrack.tracking.progress_log import ProgressLog
from jobtrack.tracking.receipt import DURABLE, NOT_WRITTEN, Outcome
from jobtrack.tracking.stats import WRITE_STATS

__all__ = ["PendingIncrement", "PerItemWriter"]

logger = logging.getLogger("jobtrack.tracking")


class _Outcome(Enum):
    RECORDED = "recorded"  # the store has the item (or had it already)
    KEPT = "kept"  # the store is unavailable: kept for retry
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
    """Writes each item as it is reported; keeps what the store cannot take yet.

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
        self._pending: deque[PendingIncrement] = deque(maxlen=max_pending)
        self._retry_after = retry_after
        self._max_retry_after = max_retry_after
        self._backoff = retry_after
        self._next_retry = 0.0
        self._retrying = asyncio.Lock()
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Increments waiting for the store to come back."""
        return len(self._pending)

    async def increment(self, item: PendingIncrement) -> bool:
        """Write one item (after any kept ones whose retry is due); True once recorded."""
        await self.retry_if_due()
        return await self._write(item, retry=False) is _Outcome.RECORDED

    async def retry_if_due(self) -> int:
        """Retry the kept increments if the backoff allows; returns how many remain."""
        if self._pending and time.monotonic() >= self._next_retry:
            return await self.retry_pending()
        return len(self._pending)

    async def retry_pending(self) -> int:
        """Try the kept increments again, oldest first; returns how many remain.

        One retrier at a time: each item is taken off the queue before its
        write, and put back at the front if the store is still unavailable.
        """
        async with self._retrying:
            while self._pending:
                item = self._pending.popleft()
                if await self._write(item, retry=True) is _Outcome.KEPT:
                    return len(self._pending)
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

    async def _write(self, item: PendingIncrement, *, retry: bool) -> _Outcome:
        started = time.perf_counter()
        try:
            result = await self._store.increment(
                item.job_id,
                item.stage,
                completed=0 if item.failed else 1,
                failed=1 if item.failed else 0,
                item_key=item.item_key,
            )
            WRITE_STATS.record(time.perf_counter() - started, 1)
        except StoreUnavailable as exc:
            WRITE_STATS.failed()
            self._keep(item, exc, retry=retry)
            return _Outcome.KEPT
        except (NotFound, InvalidRequest) as exc:
            logger.warning("progress not recorded: %s", exc, extra={"action": "progress_refused"})
            item.settle(Outcome.refusal(str(exc)))
            return _Outcome.REFUSED
        except Exception as exc:  # a store error no retry can mend; never the consumer's problem
            logger.exception(
                "progress write for job %r stage %r refused; reconciliation will count it",
                item.job_id[:100],
                item.stage[:100],
                extra={"action": "progress_refused", "job_id": item.job_id},
            )
            item.settle(Outcome.refusal(str(exc) or type(exc).__name__))
            return _Outcome.REFUSED
        item.settle(DURABLE)
        if result.counted:
            self._log.counted(item.job_id, result.stage, 1)
        return _Outcome.RECORDED

    def _keep(self, item: PendingIncrement, exc: Exception, *, retry: bool) -> None:
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
            # the deque drops the far end to make room: that item is not written
            (self._pending[-1] if retry else self._pending[0]).settle(NOT_WRITTEN)
            logger.warning(
                "%d progress writes kept for retry; dropping one (reconciliation will count it)",
                len(self._pending),
                extra={"action": "progress_dropped"},
            )
        if retry:
            self._pending.appendleft(item)
        else:
            self._pending.append(item)
        self._next_retry = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._max_retry_after)
        logger.warning(
            "progress write failed for job %s stage %s (%d pending), will retry: %s",
            item.job_id,
            item.stage,
            len(self._pending),
            exc,
            extra={"action": "progress_write_failed", "job_id": item.job_id},
        )
