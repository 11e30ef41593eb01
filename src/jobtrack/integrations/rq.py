"""RQ jobs as the items of jobtrack jobs.

Producer::

    import jobtrack
    from redis import Redis
    from rq import Queue, Retry
    from jobtrack.integrations.rq import RQTracking

    app = jobtrack.App()  # the store from JOBTRACK_STORE_URL
    tracking = RQTracking(app, Queue("emails", connection=Redis()))
    tracking.job_type("emails", stages=["send"])

    with tracking.start_job("emails") as job:
        for user in users:
            job.send("send", "mail.send_one", user.id, key=f"user-{user.id}", retry=Retry(max=2))

Worker: ``rq worker emails -w jobtrack.integrations.rq.JobtrackWorker``.

Each item is one RQ job. Its RQ id is chosen before it is written to the
ledger (a UUID; the item's key when none is given), so every send of the
item, the monitor's re-drives included, is the same RQ job. The item's
:class:`~jobtrack.integrations.TaskRef` travels in the job's ``meta``
under :data:`~jobtrack.integrations.HEADER`.

RQ forks a work horse per job, which ends with ``os._exit``. The counting
is done in the worker's main process, which outlives its horses: once a
horse has ended, :class:`JobtrackWorker` reads the job's status back from
Redis and counts a finished job done, a failed one failed with its error
(after its last retry: a job RQ enqueues or schedules again is not
counted yet; its jobtrack job is touched, so the monitor does not take it
for a stuck one while it waits). Nothing that goes wrong while counting
stops the worker: it is logged, and the monitor sends the item again.

A busy worker holds the ends it has read and hands them over together
(every :data:`HOLD_FOR` seconds, or 2.5 flush intervals of the app if
that is longer, or every :data:`HOLD_MAX` ends); a worker that finds its
queues empty hands what it holds over before it waits for a job, so the
last jobs of a run are counted at once. Everything is flushed when the
worker stops.

:class:`JobtrackWorker` hands the ends to a
:class:`~jobtrack.integrations.counter_process.CounterProcess`: the
writing is done by a process of its own, so the worker's process maps
nothing more than a worker that counts nothing (no PostgreSQL client
library, no thread of jobtrack's) and forks its horses as cheaply.
:class:`JobtrackSimpleWorker`, which does not fork, counts with a
:class:`~jobtrack.integrations.TaskCounter` in its own process; after a
busy hand-over it waits, between two jobs, until the ends are written (at
most :data:`WRITE_WAIT` seconds), so the counter's thread writes between
jobs rather than during one. A wait that runs out (the store is slow or
down) is not made again for :data:`WRITE_WAIT_BACKOFF` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Protocol

from redis.exceptions import RedisError
from rq import Queue, Retry, SimpleWorker, Worker
from rq.exceptions import InvalidJobOperation, StopRequested
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.queue import EnqueueData
from rq.registry import FailedJobRegistry

from jobtrack.errors import BrokerUnavailable, InvalidRequest
from jobtrack.integrations.counter import LONGEST, TaskCounter
from jobtrack.integrations.counter_process import CounterProcess, End, EndCounter, tell
from jobtrack.integrations.tasks import HEADER, TaskCall, TaskRef, new_task_id
from jobtrack.jobs.producer import PRODUCER_BATCH
from jobtrack.jobs.sync import SyncJobProducer
from jobtrack.jobs.types import JobType
from jobtrack.model import Job
from jobtrack.runtime import App
from jobtrack.store.ledger import LedgerItem

__all__ = [
    "HOLD_FOR",
    "HOLD_MAX",
    "RETRIES",
    "WRITE_WAIT",
    "WRITE_WAIT_BACKOFF",
    "Counter",
    "EndCounter",
    "JobtrackSimpleWorker",
    "JobtrackWorker",
    "RQJobSender",
    "RQSender",
    "RQTracking",
    "count_end",
    "function_path",
]

logger = logging.getLogger(__name__)

#: The ``meta`` field holding how many retries the job was sent with, so
#: that a failure records how many attempts it took.
RETRIES = "jobtrack_retries"

#: Seconds at most a busy worker holds the job ends it has read before it
#: hands them to its counter (a worker that finds its queues empty hands
#: them over at once).
HOLD_FOR = 0.25
#: Job ends a busy worker holds at most before it hands them over.
HOLD_MAX = 100
#: Seconds a :class:`JobtrackSimpleWorker` waits, between two jobs, for the
#: ends it handed over to be written.
WRITE_WAIT = 0.25
#: Seconds a worker hands ends over without waiting for them to be written,
#: after a wait ran out.
WRITE_WAIT_BACKOFF = 5.0

#: The send options :meth:`RQJobSender.send` takes, as ``Queue.enqueue`` names them.
_OPTIONS = ("job_timeout", "result_ttl", "ttl", "failure_ttl", "description", "at_front")


def function_path(func: str | Callable[..., Any]) -> str:
    """The dotted path RQ imports ``func`` by (a path is returned as it is).

    :raises InvalidRequest: a function RQ cannot import by name (a lambda,
        a nested function).
    """
    if isinstance(func, str):
        return func
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None)
    if not module or not name or "<" in name:
        raise InvalidRequest(f"{func!r} cannot be imported by name: send a module-level function")
    return f"{module}.{name}"


def _retry_option(retry: Retry) -> dict[str, Any]:
    return {"max": retry.max, "interval": list(retry.intervals)}


def _retry_of(option: Any) -> Retry | None:
    if not isinstance(option, dict):
        return None
    return Retry(max=int(option["max"]), interval=list(option.get("interval") or [0]))


class RQSender:
    """Sends items (RQ jobs recorded as :class:`TaskCall`) to an RQ queue,
    for the producer and the monitor's re-drives: the jobtrack
    :class:`~jobtrack.jobs.types.ItemSender` of :class:`RQTracking`'s
    job types.

    :param queue: the RQ queue the jobs go to (its connection too).
    """

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    async def send(self, job: Job, stage: str, items: Sequence[LedgerItem]) -> None:
        """Enqueue each item's RQ job, with its RQ id and its
        :class:`TaskRef` in ``meta``, in one Redis transaction. A job whose
        id RQ already has is written again (its expiry lifted, its retries
        full again) and enqueued again.

        :raises InvalidRequest: an item whose payload is not a task's.
        :raises BrokerUnavailable: Redis refused or could not be reached.
        """
        datas = [self._data(job.id, stage, item) for item in items]
        if datas:
            await asyncio.to_thread(self._enqueue, datas)

    def _data(self, job_id: str, stage: str, item: LedgerItem) -> EnqueueData:
        call = TaskCall.from_payload(item.payload)
        options = dict(call.options)
        retry = _retry_of(options.get("retry"))
        meta: dict[str, Any] = {HEADER: TaskRef(job_id, stage, item.key).header()}
        if retry is not None:
            meta[RETRIES] = retry.max
        return Queue.prepare_data(
            call.task,
            args=tuple(call.args),
            kwargs=dict(call.kwargs),
            timeout=options.get("job_timeout"),
            result_ttl=options.get("result_ttl"),
            ttl=options.get("ttl"),
            failure_ttl=options.get("failure_ttl"),
            description=options.get("description"),
            job_id=call.id_for(item.key),
            at_front=bool(options.get("at_front", False)),
            meta=meta,
            retry=retry,
        )

    def _enqueue(self, datas: list[EnqueueData]) -> None:
        queue = self.queue
        try:
            with queue.connection.pipeline() as pipe:
                # A job sent again keeps its hash's expiry (set when it
                # ended, by its result TTL) unless it is lifted first.
                for data in datas:
                    pipe.persist(queue.job_class.key_for(data.job_id))
                queue.enqueue_many(datas, pipeline=pipe)
                pipe.execute()
        except RedisError as exc:
            raise BrokerUnavailable(f"RQ queue {self.queue.name!r}: {exc}") from exc

    async def backlog(self, stage: str) -> int | None:
        """The queue's jobs waiting, started by a worker whose heartbeat has
        not expired (a dead worker's are left out: RQ fails or retries them
        when it cleans its registries), or scheduled (a retry after a
        delay); None if Redis cannot be reached. Reads only."""
        try:
            return await asyncio.to_thread(self._depth)
        except RedisError:
            return None

    def _depth(self) -> int:
        queue = self.queue
        redis = queue.connection
        with redis.pipeline(transaction=False) as pipe:
            pipe.llen(queue.key)
            pipe.zcount(queue.started_job_registry.key, f"({time.time()}", "+inf")
            pipe.zcard(queue.scheduled_job_registry.key)
            waiting, started, scheduled = pipe.execute()
        return int(waiting) + int(started) + int(scheduled)


class RQJobSender:
    """A jobtrack job being produced from synchronous code, whose items are
    RQ jobs: a context manager (see :meth:`RQTracking.start_job`). Entering
    creates the job; :meth:`send` buffers items, written to the ledger and
    enqueued a batch at a time; leaving sends what is buffered and seals the
    job (an error cancels it and propagates).
    """

    def __init__(self, producer: SyncJobProducer) -> None:
        self._producer = producer
        self._pending: dict[str, list[LedgerItem]] = {}

    @property
    def job(self) -> Job:
        """The jobtrack job.

        :raises InvalidRequest: not entered yet.
        """
        return self._producer.job

    def send(
        self,
        stage: str,
        func: str | Callable[..., Any],
        *args: Any,
        key: str | None = None,
        retry: Retry | None = None,
        job_timeout: int | str | None = None,
        result_ttl: int | None = None,
        ttl: int | None = None,
        failure_ttl: int | None = None,
        description: str | None = None,
        at_front: bool = False,
        **kwargs: Any,
    ) -> str:
        """Send ``func(*args, **kwargs)`` as an item of ``stage`` (the
        options as ``Queue.enqueue`` takes them); its key. The key is ``key``
        or else the RQ job id; the RQ id is a new UUID either way. The item
        is written and enqueued with its batch (at most
        :data:`~jobtrack.jobs.producer.PRODUCER_BATCH` held), or by
        :meth:`flush`, or on leaving.

        A ``failure_ttl`` of 0 (RQ deletes the failed job at once, and its
        failure with it) or below -1 is refused: -1 keeps it for good.

        :raises InvalidRequest: a function RQ cannot import by name, an
            argument or option that is not JSON, a ``failure_ttl`` of 0 or
            below -1, or as :meth:`flush`.
        """
        if failure_ttl is not None and (failure_ttl == 0 or failure_ttl < -1):
            raise InvalidRequest(
                f"failure_ttl must be positive or -1 (kept), not {failure_ttl}: "
                "a failed job must outlive its end for its failure to be counted"
            )
        task_id = new_task_id()
        options: dict[str, Any] = {
            name: value
            for name, value in zip(
                _OPTIONS,
                (job_timeout, result_ttl, ttl, failure_ttl, description, at_front),
                strict=True,
            )
            if value is not None and value is not False
        }
        if retry is not None:
            options["retry"] = _retry_option(retry)
        call = TaskCall(
            function_path(func), args, kwargs, options, task_id if key is not None else ""
        )
        item = LedgerItem(key if key is not None else task_id, call.payload())
        pending = self._pending.setdefault(stage, [])
        pending.append(item)
        if len(pending) >= PRODUCER_BATCH:
            self._flush_stage(stage)
        return item.key

    def flush(self) -> None:
        """Write the buffered items to the ledger and enqueue them.

        :raises InvalidRequest: an unknown stage, a key the ledger refuses.
        :raises Conflict: the job has ended meanwhile.
        :raises StoreUnavailable: the store cannot be reached.
        :raises BrokerUnavailable: Redis cannot be reached.
        """
        for stage in list(self._pending):
            self._flush_stage(stage)

    def _flush_stage(self, stage: str) -> None:
        items = self._pending.pop(stage, [])
        if items:
            self._producer.add(stage, items)

    def __enter__(self) -> RQJobSender:
        """Create the job."""
        self._producer.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Send what is buffered and seal the job; on an error, cancel it."""
        if exc_type is None:
            try:
                self.flush()
            except BaseException as error:
                self._producer.__exit__(type(error), error, error.__traceback__)
                raise
        self._pending.clear()
        self._producer.__exit__(exc_type, exc, traceback)


class RQTracking:
    """RQ jobs as the items of an app's jobtrack jobs (see the module).

    :param app: the jobtrack app (its store; job types are registered in it).
    :param queue: the RQ queue the items go to.
    """

    def __init__(self, app: App, queue: Queue) -> None:
        self.app = app
        self.queue = queue
        self.sender = RQSender(queue)
        """The :class:`RQSender` of the job types registered here."""

    def job_type(self, name: str, stages: Sequence[str], **options: Any) -> JobType:
        """Register a job type whose items are RQ jobs of :attr:`queue`
        (options as :class:`~jobtrack.jobs.types.JobType`'s).

        :raises InvalidRequest: a type of that name is registered already,
            or the options are invalid.
        """
        return self.app.job_type(name, stages, sender=self.sender, **options)

    def start_job(
        self, job_type: str | JobType, *, attributes: dict[str, Any] | None = None
    ) -> RQJobSender:
        """A job of ``job_type`` to send RQ jobs into, from synchronous code:
        ``with tracking.start_job("emails") as job: job.send(...)``.
        Raises on entering as :meth:`jobtrack.App.start_job_sync` does."""
        return RQJobSender(self.app.start_job_sync(job_type, attributes=attributes))


def count_end(counter: EndCounter, job: RQJob) -> bool:
    """Count ``job``'s end, read back from Redis after it ran: done when it
    finished (or is gone: a result TTL of 0), failed with its error when it
    failed or was stopped (or is gone but in its queue's failed registry);
    nothing when RQ enqueued or scheduled it again (a retry: its job is
    touched, see :meth:`TaskCounter.retrying`) or it is no item. Whether it
    was counted.

    :raises RedisError: Redis cannot be reached.
    """
    ref = TaskRef.from_header(job.meta.get(HEADER)) if isinstance(job.meta, dict) else None
    if ref is None:
        return False
    try:
        status = job.get_status(refresh=True)
    except InvalidJobOperation:  # gone: a TTL of 0 deletes a finished (or failed) job
        failed = FailedJobRegistry(job.origin, connection=job.connection)
        if failed.connection.zscore(failed.key, job.id) is not None:
            counter.failed(ref, "RQ job failed (its record deleted at once)", attempts=_tries(job))
        else:
            counter.done(ref)
        return True
    if status in (RQStatus.QUEUED, RQStatus.SCHEDULED):  # a retry, now or later
        counter.retrying(ref)
        return False
    if status == RQStatus.FINISHED:
        counter.done(ref)
        return True
    if status in (RQStatus.FAILED, RQStatus.STOPPED):
        result = job.latest_result()
        error = (result.exc_string if result is not None else None) or f"RQ job {status.value}"
        counter.failed(ref, error, attempts=_tries(job))
        return True
    return False


def _tries(job: RQJob) -> int:
    retries = job.meta.get(RETRIES)
    return int(retries) + 1 if isinstance(retries, int) else 1


class Counter(EndCounter, Protocol):
    """What a worker counts with: a :class:`~jobtrack.integrations.TaskCounter`
    (in the worker's process) or a
    :class:`~jobtrack.integrations.counter_process.CounterProcess` (in a
    process of its own)."""

    def gathering(self) -> contextlib.AbstractContextManager[None]:
        """A block whose ends are handed over together when it is left."""

    def flush(self, timeout: float | None = None, *, keep_writing: bool = False) -> bool:
        """Block until the ends reported are durable; False if not within ``timeout``."""

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop counting."""


class _HeldEnds:
    """Job ends read in a worker's main process, held for its counter: the
    :class:`EndCounter` :func:`count_end` tells while the worker is busy."""

    def __init__(self, hold_for: float = 0.0) -> None:
        self.ends: list[End] = []
        self.since = 0.0  # time.monotonic() of the oldest end held
        self.hold_for = hold_for  # seconds, if longer than HOLD_FOR

    def done(self, ref: TaskRef) -> None:
        """Hold ``ref`` done."""
        self._hold("done", ref, "", 1)

    def failed(self, ref: TaskRef, error: str, *, attempts: int = 1) -> None:
        """Hold ``ref`` failed with ``error``."""
        self._hold("failed", ref, error, attempts)

    def retrying(self, ref: TaskRef) -> None:
        """Hold ``ref`` retrying."""
        self._hold("retrying", ref, "", 0)

    def _hold(self, what: str, ref: TaskRef, error: str, attempts: int) -> None:
        if not self.ends:
            self.since = time.monotonic()
        self.ends.append((what, ref, error, attempts))

    def due(self) -> bool:
        """Whether the ends held are to be handed over now: :data:`HOLD_MAX`
        of them, or the oldest held :data:`HOLD_FOR` seconds (``hold_for``
        if longer)."""
        return len(self.ends) >= HOLD_MAX or (
            bool(self.ends) and time.monotonic() - self.since >= max(HOLD_FOR, self.hold_for)
        )

    def hand(self, counter: EndCounter) -> None:
        """Tell ``counter`` every end held, in the order they were read, and
        hold none. Raises what ``counter`` raises (the ends are let go)."""
        ends, self.ends = self.ends, []
        tell(counter, ends)


class _Counted:
    """What both worker classes share: their counter, from their app, and
    the job ends held for it while the worker is busy."""

    jobtrack_app: ClassVar[App | None] = None
    """The app whose store the counts go to; None: ``jobtrack.App()``
    (the store from ``JOBTRACK_STORE_URL``)."""

    _jobtrack_counter: Counter | None = None
    # Whether a busy worker waits for what it hands over to be written.
    _jobtrack_waits: ClassVar[bool] = True
    _jobtrack_held: _HeldEnds | None = None
    _jobtrack_wait_after = 0.0  # time.monotonic() before which hand-overs do not wait
    _jobtrack_default_app: App | None = None  # jobtrack.App(), without jobtrack_app

    @property
    def jobtrack_counter(self) -> Counter:
        """This worker's counter, made on first use.

        :raises InvalidRequest: the app's store is ``memory://``.
        """
        if self._jobtrack_counter is None:
            self._jobtrack_counter = self._jobtrack_new_counter(self._jobtrack_app_used)
        return self._jobtrack_counter

    def _jobtrack_new_counter(self, app: App) -> Counter:
        return TaskCounter(app)

    @property
    def _jobtrack_app_used(self) -> App:
        """:attr:`jobtrack_app`, else ``jobtrack.App()`` (made once)."""
        app = self.jobtrack_app
        if app is None:
            if self._jobtrack_default_app is None:
                self._jobtrack_default_app = App()
            app = self._jobtrack_default_app
        return app

    @property
    def _held(self) -> _HeldEnds:
        if self._jobtrack_held is None:
            interval = self._jobtrack_app_used.settings.flush_interval
            self._jobtrack_held = _HeldEnds(interval * LONGEST)
        return self._jobtrack_held

    def _count(self, job: RQJob) -> None:
        """Read ``job``'s end and hold it; hand what is held over when it
        is due. Raises nothing of its own: only RQ's ``StopRequested``, which
        RQ's signal handler raises when a stop comes meanwhile, goes through."""
        try:
            count_end(self._held, job)
        except RedisError as exc:  # its end unknown here: the monitor sends it again
            logger.warning(
                "end of RQ job %s not counted: %s",
                job.id,
                exc,
                extra={"action": "task_end_not_counted"},
            )
        except StopRequested:  # RQ's warm stop, raised by its signal handler
            raise
        except Exception:  # nothing from counting may stop the worker
            logger.exception(
                "end of RQ job %s not counted",
                job.id,
                extra={"action": "task_end_not_counted"},
            )
        if self._held.due():
            self._hand_over(wait=True)

    def _hand_over(self, *, wait: bool = False) -> None:
        """Hand the ends held to the counter (which starts on first use);
        with ``wait``, wait until they are written (see the module). Raises
        nothing of its own (RQ's ``StopRequested`` goes through): what
        cannot be handed over is logged, and the monitor sends those tasks
        again."""
        held = self._held
        if not held.ends:
            return
        count = len(held.ends)
        try:
            counter = self.jobtrack_counter
            with counter.gathering():  # one take, by the flush: no wake-up per end
                held.hand(counter)
                now = time.monotonic()
                if (
                    wait
                    and self._jobtrack_waits
                    and now >= self._jobtrack_wait_after
                    and not counter.flush(WRITE_WAIT, keep_writing=True)
                ):
                    self._jobtrack_wait_after = now + WRITE_WAIT_BACKOFF
        except StopRequested:  # RQ's warm stop, raised by its signal handler
            raise
        except Exception:  # nothing from counting may stop the worker
            logger.exception(
                "%d RQ job ends not counted",
                count,
                extra={"action": "task_end_not_counted"},
            )

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[RQJob, Queue] | None:
        """Take the next job as RQ does; when ends are held, look without
        waiting first, and hand them over before waiting for a job (or
        before stopping, in burst mode)."""
        take = super().dequeue_job_and_maintain_ttl  # type: ignore[misc]
        if self._held.ends:
            result: tuple[RQJob, Queue] | None = take(None, max_idle_time)
            if result is not None:
                return result
            self._hand_over()
            if timeout is None:
                return None
        found: tuple[RQJob, Queue] | None = take(timeout, max_idle_time)
        return found

    def _close_counter(self) -> None:
        """Hand the ends held over, then flush and close the counter."""
        self._hand_over()
        if self._jobtrack_counter is not None:
            self._jobtrack_counter.close()


class JobtrackWorker(_Counted, Worker):
    """RQ's forking :class:`rq.Worker` that counts each job's end in jobtrack
    (``rq worker -w jobtrack.integrations.rq.JobtrackWorker``): in its main
    process once the work horse has ended, handed to its counter a batch at
    a time while it is busy (see the module); flushed when the worker stops.
    Its counter is a :class:`~jobtrack.integrations.counter_process.CounterProcess`:
    the writing is done by a process of its own, so the worker forks its
    horses as cheaply as one that counts nothing, and never waits for a
    write. Set :attr:`jobtrack_app` in a subclass to count into another
    app's store.
    """

    _jobtrack_waits = False

    def _jobtrack_new_counter(self, app: App) -> Counter:
        return CounterProcess(app)

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        """Run ``job`` in a work horse (as RQ does), then read its end and
        hold it for the counter (never raises for the counting)."""
        super().execute_job(job, queue)
        self._count(job)

    def teardown(self) -> None:
        """Stop as RQ does, then hand the ends held over, flush and close
        the counter."""
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        finally:
            if not self.is_horse:
                self._close_counter()


class JobtrackSimpleWorker(_Counted, SimpleWorker):
    """RQ's :class:`rq.SimpleWorker` (no fork: jobs run in the worker's
    process) that counts each job's end in jobtrack, as
    :class:`JobtrackWorker` does."""

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        """Run ``job`` (as RQ does), then read its end and hold it for the
        counter (never raises for the counting)."""
        super().execute_job(job, queue)
        self._count(job)

    def teardown(self) -> None:
        """Stop as RQ does, then hand the ends held over, flush and close
        the counter."""
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        finally:
            self._close_counter()
