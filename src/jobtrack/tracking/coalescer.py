"""Coalesced progress writes: fold items in memory, write them per flush.

Every item reported between two flushes is folded into its (job, stage):
counts add up, item keys gather in an ordered set. A flush writes all of
them with one :meth:`~jobtrack.store.base.JobStore.add_progress` call (one
statement on PostgreSQL, one transaction on SQLite), which deduplicates the
keys against what the store already counted. So a hot job costs the store
one write per flush, whatever the item rate, and stays exact. With
``max_write``, a flush of more entries (one per job and stage) is written
as several calls, one after another, each its own transaction; by default
a flush is one call, however big. One call is the faster: a call holds
the row locks of its jobs until it commits, but with every job's items
spread over several processes each call of one process meets the locks of
another's, so more calls are more waits (docs/SCALING.md).

A flush happens every ``flush_interval`` seconds, or as soon as
``max_batch`` items wait. Each item's :class:`Receipt` resolves when its
flush is durable. While the store is unavailable, items stay folded and
flushes back off. At most ``max_pending`` items are held, those of a flush
under way included; past that, new ones are dropped and left to
reconciliation. A stage with more than ``max_entry`` items goes to the
store as several entries, so that no entry passes ``MAX_INCREMENT``.

An entry is refused for good only for its own fault: the store finds
something wrong with its data (an unknown job or stage, text or counts no
engine stores: :class:`~jobtrack.errors.InvalidRequest`,
:class:`~jobtrack.errors.NotFound`), or its write fails on its own while
other entries of the same flush are written. A refused entry fails its own
receipts, with the store's reason, and no other's. Should a write fail as
a whole, the batch is written again in halves, and so on, until only the
entries that fail on their own are left. When no entry of the flush could
be written at all (a read-only failover, a permission error, a store that
fails every write), the fault is the store's, whatever the error: the
flush counts as an outage, its items are kept and written again after a
backoff, and none is refused.

The items of one stage share one receipt per flush. When the stage went
to the store as several entries and one of them is refused, every one of
those receipts is refused at once (some of the items were not counted, and
the receipt cannot tell which), even while other entries of the stage wait
for a retry; those are still written, for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from jobtrack.errors import (
    InvalidRequest,
    JobtrackError,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from jobtrack.model import MAX_INCREMENT
from jobtrack.store.base import JobStore, ProgressResult, StageProgress
from jobtrack.tracking.progress_log import ProgressLog
from jobtrack.tracking.receipt import NOT_WRITTEN, Outcome, Receipt
from jobtrack.tracking.stats import WRITE_STATS

__all__ = ["Coalescer", "Receipt"]

logger = logging.getLogger("jobtrack.tracking")


def counted_split(progress: StageProgress, counted: int) -> tuple[int, int]:
    """How many of the entry's done and failed items were among the
    ``counted`` the store counted: all of them when it counted every item;
    else the items not counted were keys counted before, taken from the
    failed keys also reported done, then from the done keys, then from the
    failed (an estimate only when the entry mixes done and failed keys)."""
    done = progress.completed + len(progress.completed_keys)
    failed = progress.failed + len(progress.failed_keys)
    repeats = max(done + failed - counted, 0)
    both = len(set(progress.failed_keys).intersection(progress.completed_keys))
    from_failed = min(repeats, both)
    repeats -= from_failed
    from_done = min(repeats, len(progress.completed_keys))
    repeats -= from_done
    return done - from_done, max(failed - from_failed - repeats, 0)


@dataclass(slots=True)
class _Fold:
    """One stage's items since the last flush, and who waits for them."""

    waiters: list[asyncio.Future[Outcome]]
    completed: int = 0
    failed: int = 0
    completed_keys: dict[str, None] = field(default_factory=dict)
    failed_keys: dict[str, None] = field(default_factory=dict)
    # The receipt handed out for the last waiter, shared by the items that
    # wait on it (a receipt is only a view of its future).
    receipt: Receipt | None = None
    # Items of entries already written, as the store counted them.
    done_counted: int = 0
    failed_counted: int = 0

    def count(self, result: ProgressResult) -> None:
        """Add what the store counted of one of this fold's entries."""
        done, failed = counted_split(result.progress, result.counted)
        self.done_counted += done
        self.failed_counted += failed

    def outcome(self, refused: str | None = None) -> Outcome:
        """The fold's outcome once all its entries have results."""
        return Outcome(refused is None, refused, self.done_counted, self.failed_counted)

    def last_receipt(self) -> Receipt:
        """The receipt of the items added now: the last waiter's."""
        receipt, last = self.receipt, self.waiters[-1]
        if receipt is None or not receipt.watches(last):
            receipt = self.receipt = Receipt(last)
        return receipt

    def merge(self, older: _Fold) -> None:
        self.completed += older.completed
        self.failed += older.failed
        self.completed_keys = {**older.completed_keys, **self.completed_keys}
        self.failed_keys = {**older.failed_keys, **self.failed_keys}
        self.waiters = older.waiters + self.waiters
        self.done_counted += older.done_counted
        self.failed_counted += older.failed_counted

    def settle(self, outcome: Outcome) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(outcome)

    def entries(self, job_id: str, stage: str, limit: int) -> list[StageProgress]:
        """The store entries of this fold, none with more than ``limit``
        items: one, unless the stage holds more. Completed keys go before
        failed ones, so a key reported both ways counts as completed, as it
        would in one entry. (The order in which keys are claimed is the
        store's: PostgreSQL sorts them in the claiming statement.)"""
        completed, failed = self.completed, self.failed
        ckeys, fkeys = list(self.completed_keys), list(self.failed_keys)
        entries = []
        while True:
            room = limit
            c = min(completed, room)
            room -= c
            f = min(failed, room)
            room -= f
            ck, ckeys = ckeys[:room], ckeys[room:]
            room -= len(ck)
            fk, fkeys = fkeys[:room], fkeys[room:]
            completed, failed = completed - c, failed - f
            entries.append(StageProgress(job_id, stage, c, f, tuple(ck), tuple(fk)))
            if not (completed or failed or ckeys or fkeys):
                return entries

    @classmethod
    def of(cls, entries: Sequence[StageProgress], waiters: list[asyncio.Future[Outcome]]) -> _Fold:
        """A fold holding these entries' items, for these waiters."""
        fold = cls(waiters)
        for entry in entries:
            fold.completed += entry.completed
            fold.failed += entry.failed
            fold.completed_keys.update(dict.fromkeys(entry.completed_keys))
            fold.failed_keys.update(dict.fromkeys(entry.failed_keys))
        return fold


class Coalescer:
    """Folds reported items and flushes them to the store in the background.

    :param max_pending: items held at most, a flush's included; past it new
        items are dropped (their receipts resolve False, not refused).
    :param max_entry: items per store entry at most; a stage holding more is
        written as several entries of one batch.
    :param max_write: entries per store call at most (None: no limit); a
        flush holding more is written as several calls, one after another,
        each its own transaction.
    :raises ValueError: ``max_entry`` or ``max_write`` below 1.
    """

    def __init__(
        self,
        store: JobStore,
        progress_log: ProgressLog,
        *,
        flush_interval: float = 0.1,
        max_batch: int = 50_000,
        max_pending: int = 1_000_000,
        max_entry: int = MAX_INCREMENT,
        max_write: int | None = None,
        retry_after: float = 0.5,
        max_retry_after: float = 30.0,
    ) -> None:
        if max_entry < 1:
            raise ValueError("max_entry must be at least 1")
        if max_write is not None and max_write < 1:
            raise ValueError("max_write must be at least 1")
        self._max_write = max_write
        self._store = store
        self._log = progress_log
        self._interval = flush_interval
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._max_entry = max_entry
        self._retry_after = retry_after
        self._max_retry_after = max_retry_after
        self._backoff = 0.0
        self._folds: dict[tuple[str, str], _Fold] = {}
        self._items = 0  # folded, waiting for a flush
        self._in_flight = 0  # taken by the flush under way
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Items reported and not yet durable (those of a flush under way too)."""
        return self._items + self._in_flight

    @property
    def backing_off(self) -> bool:
        """True while the store was unavailable at the last flush."""
        return self._backoff > 0

    @property
    def max_batch(self) -> int:
        """Items waiting that start a flush at once."""
        return self._max_batch

    @max_batch.setter
    def max_batch(self, items: int) -> None:
        if items < 1:
            raise InvalidRequest(f"max_batch must be at least 1, not {items}")
        self._max_batch = items
        if self._items >= items and not self._backoff:
            self._wake.set()

    def add(self, job_id: str, stage: str, *, item_key: str | None, failed: bool) -> Receipt:
        """Fold one item in; never blocks, never raises."""
        if self._items + self._in_flight >= self._max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                logger.warning(
                    "%d progress items wait for the store; dropping new ones (%d so far), "
                    "reconciliation will count them",
                    self.pending,
                    self.dropped,
                    extra={"action": "progress_dropped"},
                )
            return Receipt.resolved(False)
        fold = self._folds.get((job_id, stage))
        if fold is None:
            fold = self._folds[(job_id, stage)] = _Fold([])
        if not fold.waiters:  # new, or entries kept for nobody after a refusal
            fold.waiters.append(asyncio.get_running_loop().create_future())
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
        task = self._task
        if task is None or task.done():
            self._start()
        if self._items >= self._max_batch and not self._backoff:
            self._wake.set()  # a full batch goes now, unless the store is backing us off
        return fold.last_receipt()

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
            fold.settle(NOT_WRITTEN)
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
        self._folds, self._items, self._in_flight = {}, 0, items
        batch: list[StageProgress] = []
        owners: list[tuple[str, str]] = []
        for key, fold in folds.items():
            for entry in fold.entries(*key, self._max_entry):
                batch.append(entry)
                owners.append(key)
        results: list[ProgressResult | None] = [None] * len(batch)
        faults: dict[int, Exception] = {}
        started = time.perf_counter()
        try:
            outage = None
            step = self._max_write or len(batch)
            for lo in range(0, len(batch), step):
                hi = min(lo + step, len(batch))
                outage = await self._write(batch, lo, hi, results, faults, whole=True)
                if outage is not None:
                    break  # the rest is kept, as after an outage in the middle of one call
            outage = self._judge(batch, results, faults, outage)
        except asyncio.CancelledError:
            # Whatever was under way may or may not have happened: keys make it safe.
            self._in_flight = 0
            self._settle(folds, owners, batch, results)
            raise
        self._in_flight = 0
        if outage is None:
            WRITE_STATS.record(time.perf_counter() - started, items)
            self._backoff = 0.0
        else:
            WRITE_STATS.failed()
        self._settle(folds, owners, batch, results)
        self._report([result for result in results if result is not None])
        if outage is not None:
            self._back_off(outage)
            return False
        return True

    async def _write(
        self,
        batch: list[StageProgress],
        lo: int,
        hi: int,
        results: list[ProgressResult | None],
        faults: dict[int, Exception],
        *,
        whole: bool = False,
    ) -> StoreUnavailable | None:
        """Write ``batch[lo:hi]`` (``whole``: one of the flush's calls, not a
        part of one) into ``results``; a write that fails as a
        whole (not for unavailability) is written again in halves, until
        each entry that fails alone is left: refused at once for an error
        about its data, else put in ``faults`` for :meth:`_judge`. Returns
        the outage that stopped it, if one did: the entries whose results
        are still None were not written."""
        try:
            written = await self._store.add_progress(batch[lo:hi])
            if len(written) != hi - lo:
                raise StoreError(f"{len(written)} results for {hi - lo} progress entries")
        except StoreUnavailable as exc:
            return exc
        except Exception as exc:  # what the store refused; never the consumer's problem
            if hi - lo == 1:
                if isinstance(exc, InvalidRequest | NotFound):
                    results[lo] = self._refused(batch[lo], exc)
                else:
                    faults[lo] = exc
                return None
            if whole:
                logger.warning(
                    "a progress write of %d stages failed (%s); writing it in parts "
                    "to find the stages refused",
                    hi - lo,
                    exc,
                    extra={"action": "progress_write_split"},
                )
            middle = (lo + hi) // 2
            outage = await self._write(batch, lo, middle, results, faults)
            return outage or await self._write(batch, middle, hi, results, faults)
        results[lo:hi] = written
        return None

    def _judge(
        self,
        batch: list[StageProgress],
        results: list[ProgressResult | None],
        faults: dict[int, Exception],
        outage: StoreUnavailable | None,
    ) -> StoreUnavailable | None:
        """Decide whose fault the entries that failed alone are. When the
        store wrote another entry of this flush, theirs: they are refused.
        Otherwise the store's (an entry it only answered "no such job" for
        proves no write works): they stay unwritten, and the flush is an
        outage (the one returned)."""
        if not faults:
            return outage
        if any(r is not None and r.stage is not None for r in results):
            for index, exc in faults.items():
                results[index] = self._refused(batch[index], exc)
            return outage
        first = next(iter(faults.values()))
        return outage or StoreUnavailable(
            f"the store wrote no progress entry of this flush: {type(first).__name__}: {first}"
        )

    @staticmethod
    def _refused(progress: StageProgress, exc: Exception) -> ProgressResult:
        """The result of an entry whose write fails on its own."""
        logger.error(
            "progress for job %r stage %r refused by the store (%s); reconciliation will count it",
            progress.job_id[:100],
            progress.stage[:100],
            exc,
            exc_info=exc,
            extra={"action": "progress_write_error", "job_id": progress.job_id},
        )
        error = (
            exc if isinstance(exc, JobtrackError) else StoreError(f"{type(exc).__name__}: {exc}")
        )
        return ProgressResult(progress, 0, None, rejected=error)

    def _settle(
        self,
        folds: dict[tuple[str, str], _Fold],
        owners: list[tuple[str, str]],
        batch: list[StageProgress],
        results: list[ProgressResult | None],
    ) -> None:
        """Resolve the receipts of every fold whose entries all have results,
        and of every fold with a refused entry; put the entries not written
        back, in front of newer items."""
        unwritten: dict[tuple[str, str], list[StageProgress]] = {}
        refusals: dict[tuple[str, str], str] = {}
        for key, progress, result in zip(owners, batch, results, strict=True):
            if result is None:
                unwritten.setdefault(key, []).append(progress)
            elif result.refused is not None:
                refusals.setdefault(key, result.refused)
            else:
                folds[key].count(result)
        for key, fold in folds.items():
            if key in refusals:  # the refusal wins, at once: see the module's docstring
                fold.settle(fold.outcome(refusals[key]))
            if key in unwritten:
                older = _Fold.of(unwritten[key], [] if key in refusals else fold.waiters)
                if key not in refusals:  # what was written is told with the rest
                    older.done_counted = fold.done_counted
                    older.failed_counted = fold.failed_counted
                self._restore(key, older)
            elif key not in refusals:
                fold.settle(fold.outcome())

    def _restore(self, key: tuple[str, str], older: _Fold) -> None:
        newer = self._folds.get(key)
        if newer is None:
            self._folds[key] = older
        else:
            newer.merge(older)
        self._items += older.completed + older.failed
        self._items += len(older.completed_keys) + len(older.failed_keys)

    def _back_off(self, exc: Exception) -> None:
        """Wait longer before the next flush, after the store was unavailable."""
        self._backoff = min(max(self._backoff * 2, self._retry_after), self._max_retry_after)
        logger.warning(
            "progress flush failed (%d items kept, next try in %.1f s): %s",
            self._items,
            self._backoff,
            exc,
            extra={"action": "progress_write_failed"},
        )

    def _report(self, results: list[ProgressResult]) -> None:
        refused = 0
        for result in results:
            if result.stage is None:
                refused += 1
                if refused <= _REFUSALS_LOGGED:
                    _log_refusal(result)
            elif result.counted:
                self._log.counted(result.progress.job_id, result.stage, result.counted)
        if refused > _REFUSALS_LOGGED:
            logger.warning(
                "%d more progress entries not recorded in this flush",
                refused - _REFUSALS_LOGGED,
                extra={"action": "progress_refused"},
            )


def _log_refusal(result: ProgressResult) -> None:
    """One line for an entry the store refused: the reason (which names the
    job and stage when they are unknown)."""
    progress = result.progress
    extra = {"action": "progress_refused", "job_id": progress.job_id}
    if result.missing is not None:
        logger.warning("progress not recorded: %s", result.refused, extra=extra)
    else:
        logger.warning(
            "progress for job %r stage %r not recorded: %s",
            progress.job_id[:100],
            progress.stage[:100],
            result.refused,
            extra=extra,
        )


#: Refused entries logged one by one per flush; the rest are counted in one line.
_REFUSALS_LOGGED = 20
