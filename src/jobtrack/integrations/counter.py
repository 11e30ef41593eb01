"""Counting a framework's tasks from its worker processes.

A :class:`TaskCounter` lives in each worker process of a task framework.
The framework's hook tells it that a task ended (:meth:`TaskCounter.done`,
:meth:`TaskCounter.failed`); it returns at once. The counts are coalesced
and written by a thread of its own, which runs an event loop with its own
copy of the app (store and tracker): a framework whose workers are plain
synchronous processes (Celery prefork, RQ's forks, Dramatiq's threads)
never waits on the store, and one that runs on asyncio (arq) never blocks
its loop.

A task's end costs its thread one append to a list, under a lock no other
thread holds for longer than an append or a swap of the list. The counter's
thread is not woken per task: the first end after it last took the list
wakes it, and it takes the list, with every end reported meanwhile, once
no end has come for half the app's flush interval (:data:`QUIET`; an
interval after it last took it at the soonest), or once the oldest end
has waited 2.5 intervals (:data:`LONGEST`) while others keep coming; at
once when :data:`BATCH` ends wait, or for a :meth:`TaskCounter.flush`.
What it takes goes to the store in one write. So a busy worker writes
every 2.5 intervals (a write costs about as much for one end as for
hundreds), and the last ends of a burst are written within an interval.

Each ended task counts once, by its item key, whatever the redeliveries. A
failed task's error is recorded in the ledger before it is counted failed.
:meth:`TaskCounter.flush` blocks until everything reported so far is
durable: a hook calls it before the framework acks a task that it acks
late, and before the process exits.

The counter is made for one process. A process forked from one that used
it (Celery's prefork pool, RQ's work horses) starts afresh on first use:
nothing of the parent's thread, loop or connections is used in the child.

While its thread runs, the process writes a worker's heartbeat
(:class:`~jobtrack.jobs.heartbeat.Heartbeat`, every ``heartbeat_interval``):
the stages of the app's types that send their items through a framework,
and the tasks counted per job type and stage (a job's type read once per
job, on the counter's thread); closing the counter writes its last beat,
with ``stopped_at``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from jobtrack.errors import InvalidRequest, JobtrackError, NotFound, StoreUnavailable
from jobtrack.integrations.tasks import TaskRef
from jobtrack.jobs.heartbeat import Heartbeat, ItemCounter
from jobtrack.store.ledger import storable_error
from jobtrack.tracking.receipt import Receipt

if TYPE_CHECKING:
    from jobtrack.runtime.app import App

__all__ = ["TaskCounter", "register_at_exit", "require_shared_store"]

logger = logging.getLogger(__name__)

#: Characters of a failed task's error kept in the ledger.
MAX_ERROR = 2_000
#: Seconds between two touches of a job for its tasks' retries.
TOUCH_EVERY = 5.0
#: Task ends waiting for the counter's thread that wake it at once, rather
#: than at the app's flush interval.
BATCH = 1_000
#: Flush intervals without a new task end after which the ends waiting are
#: taken (an interval after the last take at the soonest).
QUIET = 0.5
#: Flush intervals an end waits at most while others keep coming.
LONGEST = 2.5

#: Jobs whose type the counter's thread keeps, at most (then it forgets them all).
JOB_TYPES_KEPT = 10_000
#: Reads of a job's type an outage may fail before its task counts are left out.
TYPE_READS = 5

#: Every counter of the process, to reset after a fork.
_COUNTERS: weakref.WeakSet[TaskCounter] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for counter in list(_COUNTERS):
        counter._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def require_shared_store(app: App) -> None:
    """Refuse ``app`` as a counter's: task counts are written by another
    thread or process, with a copy of the app, so its store must be one
    other processes reach.

    :raises InvalidRequest: the app's store is ``memory://``.
    """
    if app.settings.store_url.startswith("memory://"):
        raise InvalidRequest(
            "task counts need a store other processes reach (postgresql://… or sqlite:///…)"
        )


def register_at_exit(close: Callable[[], None]) -> None:
    """Call ``close`` when the process exits: before the interpreter stops
    its thread pools where Python allows it (``threading``'s exit hooks),
    else with :mod:`atexit`."""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(close)
            return
        except RuntimeError:  # the interpreter is shutting down already
            return
    atexit.register(close)


class _Running:
    """The counter's thread, its event loop and its open app, in one process,
    and the task ends waiting for that thread (see the module)."""

    def __init__(self, app: App, open_within: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = app
        self.receipts: list[Receipt] = []
        self.writes: set[asyncio.Task[None]] = set()
        self.touched: dict[str, float] = {}  # job id -> when a retry last touched it
        # Reported by the framework's threads, not yet taken by the counter's:
        # each a callback to run on the counter's loop and its arguments.
        self.lock = threading.Lock()
        self.waiting: list[tuple[Callable[..., None], tuple[object, ...]]] = []
        self.armed = False  # the counter's thread will take the list
        self.timer: asyncio.TimerHandle | None = None  # the take it is armed for
        self.closed = False  # the counter's thread takes the list no more
        # When the list is taken (see the module): once no end has come for
        # `quiet` seconds, an interval after the last take at the soonest,
        # or once the oldest end has waited `longest` seconds.
        self.interval = app.settings.flush_interval
        self.quiet = self.interval * QUIET
        self.longest = self.interval * LONGEST
        self.first = 0.0  # time.monotonic() when the oldest end waiting came
        self.last = 0.0  # when the newest came
        self.taken = 0.0  # when the list was last taken
        # The heartbeat's counts, and the job types they are counted under.
        self.items = ItemCounter()
        self.job_types: dict[str, str] = {}  # job id -> its type
        # job id -> (stage, receipt, error) of the task ends waiting for its type
        self.unresolved: dict[str, list[tuple[str, Receipt, str | None]]] = {}
        self.reads: set[asyncio.Task[None]] = set()  # of job types
        self._opened: Future[None] = Future()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="jobtrack-counter", daemon=True)
        self.thread.start()
        try:
            self._opened.result(open_within)  # raises why the app could not open
        except FutureTimeout:
            self.stop(1.0)
            raise StoreUnavailable(
                f"the store did not open within {open_within:g} s; task counts are dropped "
                "until it does (the monitor sends their tasks again)"
            ) from None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            with self.lock:
                self.closed = True
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.app.__aenter__()
            # The counter batches the counts itself (see the module): each
            # batch it hands over is written at once, in one write, unless
            # the store is backing the tracker off.
            self.app.tracker.max_batch = 1
        except BaseException as exc:
            self._opened.set_exception(exc)
            return
        self._opened.set_result(None)
        heartbeat = Heartbeat(
            self.app.store,
            self.items,
            stages=[
                f"{job_type.name}/{stage}"
                for job_type in self.app.job_types.values()
                if job_type.sender is not None
                for stage in job_type.stages
            ],
            concurrency=0,
            prefetch=0,
            interval=self.app.settings.heartbeat_interval,
        )
        beating = heartbeat.start()
        try:
            await self._stop.wait()
        finally:
            with self.lock:
                self.closed = True  # what comes later is dropped, not lost
            self.take()
            if self.writes:
                await asyncio.wait(set(self.writes))
            if self.reads:  # a job type still being read: its counts wait no longer
                await asyncio.wait(set(self.reads), timeout=1.0)
                for read in set(self.reads):
                    read.cancel()
            await heartbeat.stop(beating)
            await self.app.aclose()

    def tally(self, ref: TaskRef, receipt: Receipt, error: str | None) -> None:
        """Count a task's end for the heartbeat as the store counts it (the
        receipt's outcome: nothing for a task of an unknown job or stage, or
        counted before), under its job's type (read once per job, in a task
        of the counter's loop)."""
        job_type = self.job_types.get(ref.job_id)
        if job_type is not None:
            self.items.count_receipt(job_type, ref.stage, receipt, error)
            return
        waiting = self.unresolved.get(ref.job_id)
        if waiting is None:
            waiting = self.unresolved[ref.job_id] = []
            read = self.loop.create_task(self._resolve(ref.job_id))
            self.reads.add(read)
            read.add_done_callback(self.reads.discard)
        waiting.append((ref.stage, receipt, error))

    async def _resolve(self, job_id: str) -> None:
        job_type = None
        delay = 0.5
        for _ in range(TYPE_READS):
            try:
                job_type = (await self.app.store.get_job(job_id)).job_type
                break
            except NotFound:  # its tasks' counts are refused too: nothing to count
                break
            except Exception as exc:  # an outage: read again, a while
                logger.warning(
                    "job type of job %s not read (%s); its task counts wait",
                    job_id,
                    exc,
                    extra={"action": "task_counts_waiting", "job_id": job_id},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        waiting = self.unresolved.pop(job_id, [])
        if job_type is None:
            return  # an unknown job, or still unreadable: left out of the throughput
        if len(self.job_types) >= JOB_TYPES_KEPT:
            self.job_types.clear()
        self.job_types[job_id] = job_type
        for stage, receipt, error in waiting:
            self.items.count_receipt(job_type, stage, receipt, error)

    def put(self, callback: Callable[..., None], args: tuple[object, ...], *, arm: bool) -> bool:
        """Have ``callback(self, *args)`` run on the counter's loop, with
        the rest of the batch (without ``arm``, the batch is taken by the
        next flush or :meth:`arm`, unless it is full); False when the
        counter's thread has stopped taking batches (the counter was closed
        meanwhile)."""
        with self.lock:
            if self.closed:
                return False
            waiting = self.waiting
            waiting.append((callback, args))
            self.last = now = time.monotonic()
            if len(waiting) == 1:
                self.first = now
            if self.armed or not arm:
                if len(waiting) != BATCH:
                    return True
                wake = self.take  # a full batch: now
            else:
                self.armed = True
                wake = self._arm
        self._wake(wake)
        return True

    def arm(self) -> None:
        """Have what waits taken at the flush interval, if nothing will."""
        with self.lock:
            if self.closed or self.armed or not self.waiting:
                return
            self.armed = True
        self._wake(self._arm)

    def _wake(self, callback: Callable[[], None]) -> None:
        # Closed meanwhile: the loop took what waits on its way out.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(callback)

    def _arm(self) -> None:
        if self.timer is None:
            self._check()

    def _check(self) -> None:
        """Take the list if it is due, else look again when it may be."""
        self.timer = None
        quiet = max(self.last + self.quiet, self.taken + self.interval)
        due = min(self.first + self.longest, quiet)
        if time.monotonic() >= due:
            self.take()
        else:
            self.timer = self.loop.call_later(due - time.monotonic(), self._check)

    def take(self) -> None:
        """Run the waiting callbacks, on the counter's loop."""
        if self.timer is not None:  # taken now: the take it was armed for is not needed
            self.timer.cancel()
            self.timer = None
        with self.lock:
            waiting, self.waiting = self.waiting, []
            self.armed = False
            self.taken = time.monotonic()
        for callback, args in waiting:
            try:
                callback(self, *args)
            except Exception:  # one end's fault is not the rest of the batch's
                logger.exception(
                    "a task's end was not counted", extra={"action": "task_count_failed"}
                )

    def stop(self, timeout: float) -> None:
        if self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed already
                self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout)


class _Gathering(threading.local):
    """How deep a thread is in :meth:`TaskCounter.gathering` blocks."""

    depth = 0


class TaskCounter:
    """Counts the ends of a framework's tasks into jobtrack, from a worker
    process (see the module).

    :param app: the jobtrack app whose store the counts go to; the counter
        opens a copy of it (:meth:`~jobtrack.App.with_settings`) in its own
        thread, so the app given may be open elsewhere or not at all.
    :param flush_timeout: seconds :meth:`flush` waits at most by default.
    :raises InvalidRequest: the app's store is ``memory://`` (a copy of it
        would be a store of its own, out of everyone's reach).
    """

    def __init__(self, app: App, *, flush_timeout: float = 30.0) -> None:
        require_shared_store(app)
        self._app = app
        self.flush_timeout = flush_timeout
        self._lock = threading.Lock()
        self._running: _Running | None = None
        self._pid = 0
        self._gathering = _Gathering()
        self.reported = 0
        """Task ends reported in this process (done and failed)."""
        self.dropped = 0
        """Task ends this process could not hand to the store (it did not
        open, or the counter was closed): the monitor sends their tasks again."""
        register_at_exit(self.close)
        _COUNTERS.add(self)

    def _after_fork(self) -> None:
        # A fork copies a lock held by another thread of the parent as held:
        # the child starts with a lock of its own and no counter running.
        self._lock = threading.Lock()
        self._running = None
        self._pid = 0
        self._gathering = _Gathering()
        self.reported = self.dropped = 0

    @property
    def running(self) -> bool:
        """Whether the counter's thread runs in this process, its app open."""
        running = self._running
        return running is not None and self._pid == os.getpid() and running.thread.is_alive()

    def _started(self) -> _Running:
        running = self._running
        if running is not None and self._pid == os.getpid():
            return running
        with self._lock:
            if self._running is None or self._pid != os.getpid():
                # First use, or first in a forked child: the parent's thread
                # did not come along; its loop and connections are not ours.
                copy = self._app.with_settings(self._app.settings)
                self._running = _Running(copy, self.flush_timeout)
                self._pid = os.getpid()
            return self._running

    def _hand(self, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback(running, *args)`` on the counter's loop, with the
        next batch, starting the counter first if need be; never raises: a
        count that cannot be handed over is logged and dropped."""
        try:
            running = self._started()
        except Exception as exc:  # the store did not open: the monitor makes up for it
            self._drop(f"the counter could not start: {exc}")
            return
        if not running.put(callback, args, arm=not self._gathering.depth):
            self._drop("the counter was closed")

    def _drop(self, why: str) -> None:
        self.dropped += 1
        logger.warning(
            "a task's end was not counted (%s); the monitor sends its task again",
            why,
            extra={"action": "task_count_dropped"},
        )

    def start(self) -> None:
        """Start the counter's thread and open its app now (what the first
        :meth:`done` or :meth:`failed` does otherwise): from a worker's
        start-up hook, in a thread when that hook runs on an event loop.

        :raises StoreError: the store cannot be opened (within
            :attr:`flush_timeout` seconds: ``StoreUnavailable``).
        """
        self._started()

    @contextlib.contextmanager
    def gathering(self) -> Iterator[None]:
        """A block whose task ends, reported by this thread, do not wake the
        counter's thread: they wait for the next :meth:`flush` (or the
        next end reported outside such a block, or :data:`BATCH` ends),
        which takes them with the rest. For a thread that reports many ends
        and then flushes: one wake-up of the counter's thread, not two.
        Leaving the block has what still waits taken at the flush interval,
        as :meth:`done` does."""
        gathering = self._gathering
        gathering.depth += 1
        try:
            yield
        finally:
            gathering.depth -= 1
            running = self._running
            if not gathering.depth and running is not None and self._pid == os.getpid():
                running.arm()

    def done(self, ref: TaskRef) -> None:
        """Count ``ref``'s item done (once, by its key); returns at once
        (the first call in a process waits for the store to open, at most
        :attr:`flush_timeout` seconds), the count written with the others
        of its batch (see the module): within an interval or so of the
        app's flush interval once ends stop coming, within 2.5 while they
        keep coming. Never raises:
        a count that cannot be handed to the store is logged and dropped
        (:attr:`dropped`), and the monitor sends the task again."""
        self.reported += 1
        self._hand(self._count, ref, None, 1)

    def failed(self, ref: TaskRef, error: str, *, attempts: int = 1) -> None:
        """Record ``error`` as why ``ref``'s item failed (after ``attempts``
        tries), then count it failed (once, by its key); returns at once.
        Never raises (as :meth:`done`)."""
        self.reported += 1
        self._hand(self._count, ref, storable_error(error, MAX_ERROR), attempts)

    def retrying(self, ref: TaskRef) -> None:
        """Say that ``ref``'s task will be tried again later (a retry with a
        delay): its job is touched, at most every :data:`TOUCH_EVERY`
        seconds, so that the monitor does not take a job whose last items
        wait for their retries for a stuck one and send them again. Returns
        at once; never raises."""
        self._hand(self._touch, ref)

    @staticmethod
    def _touch(running: _Running, ref: TaskRef) -> None:
        now = time.monotonic()
        if now - running.touched.get(ref.job_id, -TOUCH_EVERY) < TOUCH_EVERY:
            return
        running.touched[ref.job_id] = now
        write = running.loop.create_task(TaskCounter._touched(running, ref))
        running.writes.add(write)
        write.add_done_callback(running.writes.discard)

    @staticmethod
    async def _touched(running: _Running, ref: TaskRef) -> None:
        try:
            await running.app.store.start_stage(
                ref.job_id, ref.stage, message=f"retrying: {ref.key} and maybe more"
            )
        except JobtrackError as exc:  # best effort: the monitor may then re-drive it
            logger.info(
                "job %s not touched for a retry: %s",
                ref.job_id,
                exc,
                extra={"action": "retry_touch_failed", "job_id": ref.job_id},
            )

    @staticmethod
    def _count(running: _Running, ref: TaskRef, error: str | None, attempts: int) -> None:
        if error is None:
            TaskCounter._add(running, ref, failed=False)
            return
        write = running.loop.create_task(TaskCounter._fail(running, ref, error, attempts))
        running.writes.add(write)
        write.add_done_callback(running.writes.discard)

    @staticmethod
    async def _fail(running: _Running, ref: TaskRef, error: str, attempts: int) -> None:
        store = running.app.store
        delay = 0.1
        while True:
            try:
                await store.record_failure(ref.job_id, ref.stage, ref.key, error, attempts=attempts)
                break
            except StoreUnavailable:  # the failure is kept: try again, as counts are
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except JobtrackError as exc:  # an unknown job or stage: counted below, refused there
                logger.warning(
                    "failure of %s in job %s not recorded: %s",
                    ref.key,
                    ref.job_id,
                    exc,
                    extra={"action": "failure_not_recorded", "job_id": ref.job_id},
                )
                break
        TaskCounter._add(running, ref, failed=True, error=error)

    @staticmethod
    def _add(running: _Running, ref: TaskRef, *, failed: bool, error: str | None = None) -> None:
        receipt = running.app.tracker.add(ref.job_id, ref.stage, item_key=ref.key, failed=failed)
        running.tally(ref, receipt, error)
        receipts = running.receipts
        if not receipts or receipts[-1] is not receipt:  # a batch's items share one
            receipts.append(receipt)
        if len(receipts) >= 1_000:  # keep only those not known yet
            running.receipts = [r for r in receipts if not r.done()]

    def flush(self, timeout: float | None = None, *, keep_writing: bool = False) -> bool:
        """Block until every task end reported so far in this process is
        durable in the store; False if that is not so within ``timeout``
        seconds (default :attr:`flush_timeout`): the store is down, say.
        What is not durable is kept and written when the store is back. A
        flush that runs out is cancelled, unless ``keep_writing``: then the
        counter's thread goes on with its write (a slow store, not a lost
        one). Raises nothing."""
        running = self._running
        if running is None or self._pid != os.getpid() or not running.thread.is_alive():
            return True
        wait = self.flush_timeout if timeout is None else timeout
        future = asyncio.run_coroutine_threadsafe(self._flushed(running), running.loop)
        try:
            return future.result(wait)
        except FutureTimeout:
            if not keep_writing:
                future.cancel()
            return False

    @staticmethod
    async def _flushed(running: _Running) -> bool:
        running.take()  # what was reported before the flush, not yet taken
        if running.writes:  # failures being recorded: counted once they are
            await asyncio.wait(set(running.writes))
        receipts = list(running.receipts)
        await running.app.tracker.flush_if_due()
        durable = all([await receipt for receipt in receipts])
        running.receipts = [r for r in running.receipts if not r.done()]
        if not durable:  # refused for good (logged by the tracker) or dropped
            logger.warning(
                "%d task ends not written",
                sum(1 for r in receipts if r.refused is not None or not r.done()),
                extra={"action": "task_counts_not_written"},
            )
        return durable

    def close(self, timeout: float | None = None) -> None:
        """Flush (see :meth:`flush`), then stop the counter's thread and
        close its app; used again, the counter starts afresh. Called at the
        process's exit too (before the interpreter stops its thread pools,
        so the flush can still reconnect)."""
        with self._lock:
            running = self._running
            if running is None or self._pid != os.getpid():
                return
            self.flush(timeout)
            self._running = None
        running.stop(self.flush_timeout if timeout is None else timeout)
