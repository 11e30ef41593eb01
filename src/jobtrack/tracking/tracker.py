"""ProgressTracker: how a consumer reports a finished item.

Best effort, as the seed asks: tracking never fails the work. Reporting an
item never raises and never blocks for long; what the store cannot take yet
(it is unavailable, or fails every write: read-only during a failover, say)
is kept and retried with backoff, so nothing is lost to a short outage, and
what the store refuses for good (an unknown job or stage, data it cannot
hold, an entry that alone fails while others are written) is logged and
dropped. What is lost anyway (the process dies with
items still unwritten) is what the monitor's reconciliation is for.

Two ways of writing, chosen at construction:

- coalesced (the default): items are folded in memory and written once per
  flush, keys deduplicated in that same write (:mod:`.coalescer`);
- per item (``coalesce=False``): one store write per item, as the seed
  describes (:mod:`.per_item`).
"""

from __future__ import annotations

import asyncio
import logging

from jobtrack.store.base import MAX_KEY_LENGTH, JobStore, StageProgress, progress_problem
from jobtrack.tracking.coalescer import Coalescer
from jobtrack.tracking.per_item import PendingIncrement, PerItemWriter
from jobtrack.tracking.progress_log import ProgressLog
from jobtrack.tracking.receipt import Outcome, Receipt

__all__ = ["ProgressTracker"]

logger = logging.getLogger("jobtrack.tracking")


class ProgressTracker:
    """Counts finished items into a :class:`~jobtrack.store.base.JobStore`.

    :param coalesce: fold items and write them once per flush (default), or
        write each item on its own.
    :param flush_interval: seconds between coalesced flushes.
    :param max_batch: flush at once when this many items wait.
    :param max_write: entries (one per job and stage) per store call of a
        coalesced flush at most; a bigger flush is written as several
        calls, one after another. None (the default): one call per flush,
        the faster with many jobs spread over several processes
        (docs/SCALING.md).
    :param max_pending: items kept for the store at most; past it, new ones
        are dropped (and left to reconciliation), so memory stays bounded.
    :param log_every: log a progress line every this many items per stage.
    :param enabled: when False, nothing is written (the rollback switch: the
        monitor alone then keeps the counts).
    """

    def __init__(
        self,
        store: JobStore,
        *,
        coalesce: bool = True,
        flush_interval: float = 0.1,
        max_batch: int = 50_000,
        max_write: int | None = None,
        max_pending: int = 1_000_000,
        log_every: int = 50,
        retry_after: float = 0.5,
        max_retry_after: float = 30.0,
        enabled: bool = True,
    ) -> None:
        progress_log = ProgressLog(log_every)
        self._max_pending = max_pending
        self.enabled = enabled
        self.coalesce = coalesce
        self._coalescer = Coalescer(
            store,
            progress_log,
            flush_interval=flush_interval,
            max_batch=max_batch,
            max_write=max_write,
            max_pending=max_pending,
            retry_after=retry_after,
            max_retry_after=max_retry_after,
        )
        self._per_item = PerItemWriter(
            store,
            progress_log,
            max_pending=max_pending,
            retry_after=retry_after,
            max_retry_after=max_retry_after,
        )
        self._writes: set[asyncio.Task[bool]] = set()

    @property
    def max_batch(self) -> int:
        """Items waiting that start a coalesced flush at once, before the
        interval is up."""
        return self._coalescer.max_batch

    @max_batch.setter
    def max_batch(self, items: int) -> None:
        """Set :attr:`max_batch`; a consumer that acks once the count is
        durable holds at most its prefetch in items, so it sets a part of
        that (else it waits out the interval with its window full).

        :raises InvalidRequest: ``items`` below 1.
        """
        self._coalescer.max_batch = items

    @property
    def pending(self) -> int:
        """Items reported and not yet in the store."""
        return self._coalescer.pending + self._per_item.pending + len(self._writes)

    @property
    def dropped(self) -> int:
        """Items given up on because too many were waiting."""
        return self._coalescer.dropped + self._per_item.dropped

    def add(
        self, job_id: str, stage: str, *, item_key: str | None = None, failed: bool = False
    ) -> Receipt:
        """Report one finished item (``failed`` if it could not be done) and
        return at once; the receipt resolves when the item is durable, or
        refused (with the reason: an id or key no store can hold, an unknown
        job or stage), or dropped past ``max_pending``."""
        if not self.enabled:
            return Receipt.resolved(False)
        if (problem := _item_problem(job_id, stage, item_key)) is not None:
            logger.warning(
                "progress not recorded: %s", problem, extra={"action": "progress_refused"}
            )
            return Receipt.refusal(problem)
        if self.coalesce:
            return self._coalescer.add(job_id, stage, item_key=item_key, failed=failed)
        if self.pending >= self._max_pending:
            self._per_item.dropped += 1
            return Receipt.resolved(False)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Outcome] = loop.create_future()
        write = loop.create_task(
            self._per_item.increment(PendingIncrement(job_id, stage, item_key, failed, waiter))
        )
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        return Receipt(waiter)

    async def increment(
        self, job_id: str, stage: str, *, item_key: str | None = None, failed: bool = False
    ) -> bool:
        """Report one finished item and write it now: True once durable,
        False when refused, or kept for a later retry because the store is
        unavailable (then this returns at once). Never raises."""
        if not self.enabled:
            return False
        if not self.coalesce:
            if _item_problem(job_id, stage, item_key) is not None:
                return await self.add(job_id, stage, item_key=item_key, failed=failed)
            return await self._per_item.increment(PendingIncrement(job_id, stage, item_key, failed))
        receipt = self.add(job_id, stage, item_key=item_key, failed=failed)
        if not receipt.done() and not self._coalescer.backing_off:
            await self._coalescer.flush()  # now, not at the next interval
        return await receipt.wait(0)

    async def flush_if_due(self) -> int:
        """Write what waits, if no backoff holds it back; returns what still waits."""
        if self._coalescer.pending:
            await self._coalescer.flush()
        await self._per_item.retry_if_due()
        return self.pending

    async def flush(self, *, max_wait: float) -> bool:
        """Write everything that waits, retrying for up to ``max_wait`` seconds."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=max_wait)
        per_item = await self._per_item.aclose(max_wait=max_wait)
        return await self._coalescer.aclose(max_wait=max_wait) and per_item


def _item_problem(job_id: str, stage: str, item_key: str | None) -> str | None:
    """Why no store can hold this item's progress, or None. Every item
    passes here: plain ASCII text without NUL is told apart at once."""
    key = item_key or ""
    text = job_id + stage + key
    plain = text.isascii() and "\x00" not in text
    if plain and item_key != "" and len(key) <= MAX_KEY_LENGTH:
        return None
    keys = () if item_key is None else (item_key,)
    return progress_problem(StageProgress(job_id, stage, completed_keys=keys))
