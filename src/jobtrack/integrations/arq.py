"""arq jobs as the items of jobtrack jobs (the ``arq`` extra).

::

    import jobtrack
    from arq.connections import RedisSettings
    from jobtrack.integrations.arq import ArqTracking

    app = jobtrack.App()
    tracking = ArqTracking(app, RedisSettings(), queue_name="arq:queue")
    tracking.job_type("emails", stages=["send"])

    async def send_email(ctx, address):
        ...

    @tracking.worker  # the functions counted, the counter flushed on shutdown
    class WorkerSettings:
        functions = [send_email]
        queue_name = "arq:queue"

    async def produce(addresses):
        async with app, tracking.start_job("emails") as job:
            for address in addresses:
                await job.send("send", "send_email", address, _key=address)

How it fits arq (0.25):

- **The id.** An item's arq job id is chosen before its ledger entry is
  written: the ``_job_id`` given, else ``jobtrack:<job>:<stage>:<key>`` (the
  jobtrack job's id in it, so that the same key in two jobs never meets
  arq's uniqueness of ids). The key is the ``_key`` given, else the
  ``_job_id`` given, else a fresh UUID.
- **The reference.** arq jobs carry no headers: the item's
  :class:`~jobtrack.integrations.TaskRef` travels as the keyword argument
  :data:`~jobtrack.integrations.HEADER` (``jobtrack``), which the wrapped
  function removes before calling yours.
- **Sending.** Each batch goes to Redis in one script run, which enqueues an
  item unless its id is in the queue already (waiting, deferred, or being
  run: arq holds it and runs it). An id that is not in the queue is
  enqueued afresh: a result arq keeps for it, its retry counter and an old
  job body are dropped first. So a task whose run ended but whose count was
  lost (a worker killed before its flush), or that was purged from the
  queue, runs again when the monitor re-drives it, where arq's own
  ``enqueue_job`` would refuse it.
- **Counting.** :meth:`ArqTracking.worker` wraps each function: one that
  returns counts done; one that raises counts failed with its error, after
  ``job_try`` attempts, unless it raised :class:`arq.worker.Retry` (arq
  runs it again: its jobtrack job is touched, see
  :meth:`~jobtrack.integrations.TaskCounter.retrying`) short of the last
  try (``max_tries``: arq then fails it without running it, so the last
  :class:`~arq.worker.Retry` counts as the failure). The counter is started
  in a thread, never on the worker's loop: by ``on_startup``, else (a
  function used without :meth:`ArqTracking.worker`, a job ending after
  ``on_shutdown``) before the first end is reported. A run that is
  cancelled (a timeout, an abort, a shutdown) is settled after arq has
  recorded it (``after_job_end``): failed when arq finished the job,
  nothing when it will run it again.
- **Acks.** arq deletes the job after the function returns; the count is
  reported before that, and written by the counter's thread a moment later.
  A worker killed in between loses the count of a job arq has finished: the
  monitor finds the item missing and sends it again (it runs once more).
  The counter is flushed when the worker shuts down (``on_shutdown``).
- **Queue depth.** :meth:`ArqSender.backlog` counts the queue's jobs that
  wait to run or are deferred. arq keeps a job in its queue while it runs
  too, but a running job cannot be told from one whose worker died (both
  hold an in-progress key until it expires, the job timeout plus 10 s,
  when arq runs the dead one again), so running jobs are left out: a job
  whose last items are being run may be re-driven, which enqueues nothing
  (their ids are in the queue) and runs nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import default_queue_name, expires_extra_ms, job_key_prefix
from arq.jobs import SerializationError, Serializer, serialize_job
from arq.worker import Function, Retry, RetryJob, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobtrack.errors import BrokerError, BrokerUnavailable, InvalidRequest
from jobtrack.integrations.counter import TaskCounter
from jobtrack.integrations.tasks import HEADER, TaskCall, TaskRef
from jobtrack.jobs.producer import PRODUCER_BATCH, JobProducer
from jobtrack.jobs.types import JobType
from jobtrack.model import Job
from jobtrack.runtime.app import App
from jobtrack.store.ledger import LedgerItem

__all__ = ["ArqJob", "ArqSender", "ArqTracking", "arq_job_id"]

logger = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT")

#: arq's defaults, for settings that leave them out.
_MAX_TRIES = 5
_JOB_TIMEOUT = 300.0

#: Where a cancelled run's reference waits in the job's ``ctx`` for ``after_job_end``.
_CANCELLED = "jobtrack_cancelled"

#: The send options kept in the ledger (JSON: seconds as numbers).
_OPTIONS = ("_defer_by", "_expires")

# Enqueue each job unless its id is in the queue (arq holds it); a kept
# result, a retry counter and an old body of an id not queued are dropped.
# KEYS[1] the queue; ARGV per job: id, body, score (ms), expiry (ms).
_ENQUEUE = """
local queue = KEYS[1]
local sent = 0
for i = 1, #ARGV, 4 do
  local id = ARGV[i]
  if not redis.call('ZSCORE', queue, id) then
    redis.call('DEL', 'arq:result:' .. id, 'arq:retry:' .. id)
    redis.call('SET', 'arq:job:' .. id, ARGV[i + 1], 'PX', ARGV[i + 3])
    redis.call('ZADD', queue, ARGV[i + 2], id)
    sent = sent + 1
  end
end
return sent
"""

# The jobs of the queue that no worker runs (no in-progress key): waiting or deferred.
_WAITING = """
local n = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', 'arq:in-progress:' .. id) == 0 then
    n = n + 1
  end
end
return n
"""


def arq_job_id(job_id: str, stage: str, key: str) -> str:
    """The arq job id of item ``key`` of ``job_id``'s ``stage`` when the
    sender chose no ``_job_id``: ``jobtrack:<job>:<stage>:<key>``."""
    return f"jobtrack:{job_id}:{stage}:{key}"


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip()


def _seconds(value: Any, option: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise InvalidRequest(f"{option} is seconds (a number or a timedelta), not {value!r}")


def _redis_failure(exc: RedisError, doing: str) -> BrokerError:
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return BrokerUnavailable(f"Redis unreachable while {doing}: {exc}")
    return BrokerError(f"Redis refused {doing}: {exc}")


class ArqSender:
    """The :class:`~jobtrack.jobs.types.ItemSender` of a job type whose items
    are arq jobs on one queue: the producer and the monitor's re-drive
    enqueue through it (see the module for when an id is enqueued again).

    :param tracking: the tracking whose Redis and serializer it uses.
    :param queue_name: the arq queue (a Redis sorted set) of the items.
    """

    def __init__(self, tracking: ArqTracking, queue_name: str) -> None:
        self.tracking = tracking
        self.queue_name = queue_name

    async def send(self, job: Job, stage: str, items: Sequence[LedgerItem]) -> None:
        """Enqueue ``items`` of ``job``'s ``stage`` under their arq ids, each
        carrying its reference; an id already in the queue is left there.

        :raises InvalidRequest: an item's payload is not a task's, or arq's
            serializer refuses its arguments.
        :raises BrokerUnavailable: Redis cannot be reached.
        :raises BrokerError: Redis refused the script.
        """
        now = int(time.time() * 1000)
        argv: list[str | bytes | int] = []
        for item in items:
            call = TaskCall.from_payload(item.payload)
            defer = _seconds(call.options.get("_defer_by"), "_defer_by") or 0.0
            expires = _seconds(call.options.get("_expires"), "_expires")
            kwargs = dict(call.kwargs)
            kwargs[HEADER] = TaskRef(job.id, stage, item.key).header()
            try:
                body = serialize_job(
                    call.task,
                    tuple(call.args),
                    kwargs,
                    None,
                    now,
                    serializer=self.tracking.job_serializer,
                )
            except SerializationError as exc:
                raise InvalidRequest(f"item {item.key!r}: {exc}") from exc
            defer_ms = int(defer * 1000)
            expires_ms = int(expires * 1000) if expires else defer_ms + expires_extra_ms
            argv += [call.id_for(item.key), body, now + defer_ms, expires_ms]
        if not argv:
            return
        redis = await self.tracking.redis()
        try:
            await redis.eval(_ENQUEUE, 1, self.queue_name, *argv)
        except RedisError as exc:
            raise _redis_failure(exc, f"enqueueing on {self.queue_name}") from exc

    async def backlog(self, stage: str) -> int | None:
        """The jobs of the queue (of any job) that wait to run or are
        deferred, those being run left out (see the module); None when
        Redis cannot be read."""
        try:
            redis = await self.tracking.redis()
            return int(await redis.eval(_WAITING, 1, self.queue_name))
        except (RedisError, OSError) as exc:
            logger.warning(
                "arq queue %s not read: %s",
                self.queue_name,
                exc,
                extra={"action": "arq_backlog_unknown"},
            )
            return None


class ArqJob:
    """A jobtrack job whose items are arq jobs: an async context manager
    made by :meth:`ArqTracking.start_job`. Entering creates the job;
    :meth:`send` adds items (written to the ledger, then enqueued, a batch
    at a time); leaving without an error sends what is left and seals the
    job's stages; an error cancels the job and propagates.
    """

    def __init__(self, producer: JobProducer, *, batch_size: int = PRODUCER_BATCH) -> None:
        if not 1 <= batch_size <= PRODUCER_BATCH:
            raise InvalidRequest(f"batch_size must be 1 to {PRODUCER_BATCH}, not {batch_size}")
        self.producer = producer
        """The jobtrack producer underneath."""
        self._batch_size = batch_size
        self._pending: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    @property
    def job(self) -> Job:
        """The job (as created, or as sealing left it).

        :raises InvalidRequest: not entered yet.
        """
        return self.producer.job

    async def send(
        self,
        stage: str,
        function: str,
        *args: Any,
        _key: str | None = None,
        _job_id: str | None = None,
        _defer_by: float | timedelta | None = None,
        _expires: float | timedelta | None = None,
        **kwargs: Any,
    ) -> str:
        """Add arq function ``function`` with ``args`` and ``kwargs`` (JSON
        values) as an item of ``stage``, as ``enqueue_job`` would; its arq
        job id (see the module). Items are written and enqueued a batch at a
        time: when a batch is full, at :meth:`flush` and on leaving.

        :raises InvalidRequest: not entered, an argument that is not JSON, a
            ``_defer_by`` or ``_expires`` that is no duration; when a batch
            goes: as :meth:`flush`.
        """
        job = self.job
        if HEADER in kwargs:
            raise InvalidRequest(f"the keyword argument {HEADER!r} is jobtrack's own")
        key = _key or _job_id or uuid.uuid4().hex
        task_id = _job_id or arq_job_id(job.id, stage, key)
        options = {
            name: seconds
            for name, value in (("_defer_by", _defer_by), ("_expires", _expires))
            if (seconds := _seconds(value, name)) is not None
        }
        payload = TaskCall(function, args, kwargs, options, task_id).payload()
        pending = self._pending.setdefault(stage, [])
        pending.append((key, payload))
        if len(pending) >= self._batch_size:
            await self._send_stage(stage)
        return task_id

    async def flush(self) -> int:
        """Write and enqueue every item :meth:`send` holds; how many were new
        to the ledger.

        :raises InvalidRequest: an unknown stage, a key the ledger refuses.
        :raises Conflict: the job has ended meanwhile.
        :raises StoreUnavailable: the store cannot be reached.
        :raises BrokerError: Redis could not be written.
        """
        new = 0
        for stage in list(self._pending):
            new += await self._send_stage(stage)
        return new

    async def _send_stage(self, stage: str) -> int:
        items = self._pending.pop(stage, [])
        return await self.producer.add(stage, items) if items else 0

    async def __aenter__(self) -> ArqJob:
        """Create the job."""
        await self.producer.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Send what is held and seal (no error), or cancel the job (an
        error, which propagates)."""
        if exc is None:
            try:
                await self.flush()
            except BaseException as failure:
                await self.producer.__aexit__(type(failure), failure, failure.__traceback__)
                raise
        else:
            self._pending.clear()
        await self.producer.__aexit__(exc_type, exc, tb)


class ArqTracking:
    """arq's jobs as jobtrack items: the job types whose items are arq jobs,
    their producer, and the worker side (see the module).

    :param app: the jobtrack app the job types are registered in.
    :param redis_settings: arq's Redis settings (default: arq's, localhost).
    :param queue_name: the arq queue of the job types that name none.
    :param job_serializer: arq's job serializer, as the workers have it
        (default pickle).
    """

    def __init__(
        self,
        app: App,
        redis_settings: RedisSettings | None = None,
        *,
        queue_name: str = default_queue_name,
        job_serializer: Serializer | None = None,
    ) -> None:
        self.app = app
        self.redis_settings = redis_settings or RedisSettings()
        self.queue_name = queue_name
        self.job_serializer = job_serializer
        self._pool: tuple[asyncio.AbstractEventLoop, ArqRedis] | None = None
        self._counter: TaskCounter | None = None

    @property
    def counter(self) -> TaskCounter:
        """The worker side's counter (made on first use).

        :raises InvalidRequest: the app's store is ``memory://``.
        """
        if self._counter is None:
            self._counter = TaskCounter(self.app)
        return self._counter

    def job_type(
        self, name: str, stages: Sequence[str], *, queue_name: str | None = None, **options: Any
    ) -> JobType:
        """Declare and register a job type whose items are arq jobs on
        ``queue_name`` (default the tracking's); ``options`` as
        :class:`~jobtrack.jobs.types.JobType`'s.

        :raises InvalidRequest: as :class:`~jobtrack.jobs.types.JobType`,
            or a type of that name is registered already.
        """
        sender = ArqSender(self, queue_name or self.queue_name)
        return self.app.job_type(name, stages, sender=sender, **options)

    def start_job(
        self,
        job_type: str,
        *,
        attributes: dict[str, Any] | None = None,
        batch_size: int = PRODUCER_BATCH,
    ) -> ArqJob:
        """A new job of ``job_type``, to use as ``async with
        tracking.start_job(...) as job:`` in an open app.

        :raises InvalidRequest: an unknown type, or one that is not arq's; a
            batch size out of range.
        """
        chosen = self.app.get_type(job_type)
        if not isinstance(chosen.sender, ArqSender):
            raise InvalidRequest(f"job type {job_type!r} does not send arq jobs")
        return ArqJob(self.app.start_job(chosen, attributes=attributes), batch_size=batch_size)

    async def redis(self) -> ArqRedis:
        """arq's Redis pool for the running event loop (made on first use in
        each loop).

        :raises RedisError: Redis cannot be reached (after arq's retries).
        """
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool[0] is not loop:
            pool = await create_pool(self.redis_settings, job_serializer=self.job_serializer)
            self._pool = (loop, pool)
        return self._pool[1]

    async def aclose(self) -> None:
        """Close the Redis pool of the running event loop, if any."""
        pool, self._pool = self._pool, None
        if pool is not None and pool[0] is asyncio.get_running_loop():
            await pool[1].aclose(close_connection_pool=True)

    def worker(self, settings: SettingsT) -> SettingsT:
        """Make arq worker settings (a class, or a dict) count their jobs:
        each function is wrapped (the reference taken out of its keyword
        arguments, its end counted), the counter started on startup and
        flushed on shutdown, a cancelled run settled after it ends; the
        hooks already there still run. Returns ``settings``, changed.

        :raises InvalidRequest: settings with no functions.
        """
        get, put = _accessors(settings)
        functions = get("functions")
        if not functions:
            raise InvalidRequest("arq worker settings need their functions")
        max_tries = int(get("max_tries") or _MAX_TRIES)
        retry_jobs = get("retry_jobs")
        job_timeout = float(_seconds(get("job_timeout"), "job_timeout") or _JOB_TIMEOUT)
        put(
            "functions",
            [
                self.function(
                    f,
                    max_tries=max_tries,
                    retry_jobs=retry_jobs is not False,
                    job_timeout=job_timeout,
                )
                for f in functions
            ],
        )
        put("on_startup", _chain(self._start, get("on_startup")))
        put("on_shutdown", _chain(get("on_shutdown"), self._stop))
        put("after_job_end", _chain(self._settle, get("after_job_end")))
        return settings

    def function(
        self,
        function: Any,
        *,
        max_tries: int = _MAX_TRIES,
        retry_jobs: bool = True,
        job_timeout: float = _JOB_TIMEOUT,
    ) -> Function:
        """``function`` (a coroutine function, an import path or an arq
        :class:`~arq.worker.Function`) wrapped to count its ends, under its
        own name; ``max_tries``, ``retry_jobs`` and ``job_timeout`` are the
        worker's (a function's own ``max_tries`` and timeout win). Used
        without :meth:`worker`, the counter is started (in a thread) before
        the first end is reported; one that cannot start is logged, and
        that end not counted.

        :raises AssertionError: (arq's) not a coroutine function.
        """
        given = func(function)
        tries = given.max_tries or max_tries
        timeout = given.timeout_s or job_timeout
        tracking = self
        inner = given.coroutine

        async def counted(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
            ref = TaskRef.from_header(kwargs.pop(HEADER, None))
            if ref is None:  # not sent as an item: run, uncounted
                return await inner(ctx, *args, **kwargs)
            counter = tracking.counter
            started = time.monotonic()
            job_try = int(ctx.get("job_try") or 1)
            try:
                result = await inner(ctx, *args, **kwargs)
            except (Retry, RetryJob) as exc:
                if not retry_jobs:
                    error = _error_text(exc)
                    await tracking._report(counter.failed, ref, error, attempts=job_try)
                elif job_try >= tries:  # arq fails it next time, unrun and unhooked
                    cause = exc.__cause__ or exc
                    error = f"{_error_text(cause)} (retried: {tries} tries used)"
                    await tracking._report(counter.failed, ref, error, attempts=job_try)
                else:  # arq runs it again, maybe after a delay
                    await tracking._report(counter.retrying, ref)
                raise
            except asyncio.CancelledError:
                elapsed = time.monotonic() - started
                error = (
                    f"TimeoutError: the job ran past its timeout of {timeout:g} s"
                    if elapsed >= timeout - 0.05
                    else "CancelledError: the job was cancelled (aborted)"
                )
                ctx[_CANCELLED] = (ref, error, job_try)  # settled by after_job_end
                raise
            except Exception as exc:
                await tracking._report(counter.failed, ref, _error_text(exc), attempts=job_try)
                raise
            await tracking._report(counter.done, ref)
            return result

        counted.__qualname__ = getattr(inner, "__qualname__", given.name)
        return Function(
            given.name,
            counted,
            given.timeout_s,
            given.keep_result_s,
            given.keep_result_forever,
            given.max_tries,
        )

    async def _start(self, ctx: dict[Any, Any]) -> None:
        # The counter opens its own app in a thread: not on the worker's loop.
        await asyncio.to_thread(self.counter.start)

    async def _stop(self, ctx: dict[Any, Any]) -> None:
        await asyncio.to_thread(self.counter.close)

    async def _report(self, report: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Tell the counter ``report(*args, **kwargs)`` (its ``done``,
        ``failed`` or ``retrying``), starting it first in a thread when it
        is not running (a function used without :meth:`worker`, a job that
        ends after the worker's shutdown closed it): opening the store
        must not block the worker's loop. Never raises: a counter that
        cannot start is logged, and the report dropped (the monitor sends
        the item again)."""
        if not self.counter.running:
            try:
                await asyncio.to_thread(self.counter.start)
            except Exception as exc:
                logger.warning(
                    "the task counter could not start: %s; a task's end is not counted",
                    exc,
                    extra={"action": "task_counter_not_started"},
                )
                return
        report(*args, **kwargs)

    async def _settle(self, ctx: dict[Any, Any]) -> None:
        cancelled = ctx.pop(_CANCELLED, None)
        if cancelled is None:
            return
        ref, error, job_try = cancelled
        redis: ArqRedis = ctx["redis"]
        # arq deletes the job's body when it finishes it; a run it will
        # repeat (a shutdown, retry_jobs) keeps it.
        if not await redis.exists(job_key_prefix + str(ctx["job_id"])):
            await self._report(self.counter.failed, ref, error, attempts=job_try)


_Hook = Callable[[dict[Any, Any]], Awaitable[Any]]


def _chain(first: _Hook | None, second: _Hook | None) -> _Hook:
    async def both(ctx: dict[Any, Any]) -> None:
        if first is not None:
            await first(ctx)
        if second is not None:
            await second(ctx)

    return both


def _accessors(
    settings: Any,
) -> tuple[Callable[[str], Any], Callable[[str, Any], None]]:
    """Read and write arq settings as arq reads them: a dict's items, or a
    class's own attributes (arq ignores inherited ones)."""
    if isinstance(settings, dict):
        return settings.get, settings.__setitem__
    if isinstance(settings, type):
        own: Mapping[str, Any] = vars(settings)

        def put(name: str, value: Any) -> None:
            setattr(settings, name, value)

        return own.get, put
    raise InvalidRequest(f"arq worker settings are a class or a dict, not {type(settings)}")
