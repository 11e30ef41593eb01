"""Celery tasks as the items of jobtrack jobs.

Producer::

    import jobtrack
    from celery import group
    from jobtrack.integrations.celery import CeleryTracking
    from proj.celery import celery_app, send_email

    app = jobtrack.App()
    tracking = CeleryTracking(app, celery_app)
    tracking.job_type("emails", stages=["send"])

    with tracking.start_job("emails") as job:
        job.send_group("send", group(send_email.s(user) for user in users))
    print(job.job.id)

Worker (in the module ``celery -A`` imports)::

    tracking.install()

Each task is sent with a task id chosen before its ledger entry is written
(the signature's own id, else a new UUID); that id is the item's key unless
a key is given, and it stays the same across redeliveries and retries. The
task's :class:`~jobtrack.integrations.tasks.TaskRef` travels in the message
headers, under :data:`~jobtrack.integrations.tasks.HEADER`; on the worker it
is ``task.request.jobtrack`` (Celery copies custom headers onto the request)
and it is carried over to a retry's message.

On the worker, :meth:`CeleryTracking.install` connects Celery's signals:
``task_success`` counts the item done; ``task_failure`` counts it failed
with its error, after ``request.retries + 1`` attempts (a retry, by
``self.retry()`` or ``autoretry_for``, fires ``task_retry`` instead, which
counts nothing but touches the job, so that the monitor does not take a job
whose last items wait for their retries for a stuck one); ``task_revoked``
counts a revoked, expired or terminated task failed (a worker keeps its id
in its revoked set: sent again, it would not run); ``worker_process_shutdown``
and ``worker_shutdown`` flush the counts. A hard time limit and
``Reject(requeue=False)`` fire ``task_failure`` in the worker's main
process, where ``task.request`` is an empty context: the handler then
takes the reference from the worker's own request of that task, the
``celery.worker.request.Request`` whose ``on_timeout`` or ``on_failure``
sent the signal (found up the calling frames, so that the main process,
which every task passes through, pays nothing per task for these rare
failures; a failure whose request cannot be found is left to the monitor,
which sends the task again).

A task that acks late (``acks_late``) has its count made durable before
its message is acked (unless ``flush_before_ack=False``): ``task_postrun``
runs in the pool process at the end of ``celery.app.trace``'s
``trace_task``, before the result goes back to the main process, whose ``Request.on_success`` (or
``on_failure``) then acks the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from celery import Celery, Task, signals  # type: ignore[import-untyped]
from celery.canvas import Signature  # type: ignore[import-untyped]
from celery.worker.request import Request as WorkerRequest  # type: ignore[import-untyped]
from kombu.exceptions import ChannelError, KombuError, OperationalError

from jobtrack.errors import BrokerError, BrokerUnavailable, InvalidRequest
from jobtrack.integrations.counter import TaskCounter
from jobtrack.integrations.tasks import HEADER, TaskCall, TaskRef, new_task_id
from jobtrack.jobs.sync import SyncJobProducer
from jobtrack.jobs.types import JobType
from jobtrack.model import Job
from jobtrack.runtime.app import App
from jobtrack.store.ledger import LedgerItem

__all__ = [
    "CeleryJob",
    "CeleryTracking",
    "TaskSender",
    "error_text",
    "item_of",
    "task_ref",
    "worker_request",
]

logger = logging.getLogger(__name__)

#: Calling frames searched for the worker's request of a task whose failure
#: the main process reports (the signal's dispatch is 2 or 3 frames deep).
REQUEST_FRAMES = 8


def task_ref(request: Any) -> TaskRef | None:
    """The :class:`TaskRef` a running task's request (``task.request``)
    carries; None for a task not sent as an item (or a malformed reference,
    logged)."""
    value = getattr(request, HEADER, None)
    if value is None:
        for name in ("headers", "request_dict"):
            fields = getattr(request, name, None)
            if isinstance(fields, Mapping) and HEADER in fields:
                value = fields[HEADER]
                break
    return TaskRef.from_header(value)


def worker_request(task_id: Any) -> Any | None:
    """The worker's ``celery.worker.request.Request`` of ``task_id`` whose
    method is up the calling frames (a failure the worker's main process
    reports from its ``on_timeout`` or ``on_failure``); None when none is.
    Raises nothing."""
    if not isinstance(task_id, str):
        return None
    frame = sys._getframe(1)
    for _ in range(REQUEST_FRAMES):
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, WorkerRequest) and owner.id == task_id:
            return owner
    return None


def item_of(signature: Signature, key: str | None = None) -> LedgerItem:
    """The ledger item that sends ``signature``: keyed ``key``, else the task
    id (the signature's own, else a new one), which is sent every time.

    :raises InvalidRequest: an argument or option that is not JSON; a
        canvas (a chain, a chord...) rather than one task's signature.
    """
    name = str(signature.task)
    if name.startswith("celery."):
        raise InvalidRequest(
            f"an item is one task's signature, not a {name!r} canvas: "
            "send its tasks (send_group takes a group's)"
        )
    options = dict(signature.options)
    task_id = options.pop("task_id", None) or new_task_id()
    kept = dict(options)
    headers = kept.pop("headers", None)
    if isinstance(headers, Mapping):  # the user's own, sent again with jobtrack's
        own = {name: value for name, value in headers.items() if name != HEADER}
        if own:
            kept["headers"] = own
    call = TaskCall(
        name,
        tuple(signature.args),
        dict(signature.kwargs),
        kept,
        task_id=task_id if key is not None and key != task_id else "",
    )
    return LedgerItem(task_id if key is None else key, call.payload())


class TaskSender:
    """Sends a job type's items as Celery tasks, and tells a queue's depth
    (the :class:`~jobtrack.jobs.types.ItemSender` of :class:`CeleryTracking`).

    :param celery_app: the Celery app whose broker the tasks go to.
    :param queues: the queue each stage's tasks wait in (for
        :meth:`backlog`): one name for every stage, or by stage; a stage
        not named is in ``task_default_queue``.
    """

    def __init__(self, celery_app: Celery, queues: str | Mapping[str, str] | None = None) -> None:
        self.celery_app = celery_app
        self.queues = queues

    async def send(self, job: Job, stage: str, items: Sequence[LedgerItem]) -> None:
        """Send each item's task with its task id and its reference in the
        headers, over one producer connection.

        :raises InvalidRequest: an item whose payload is not a task's.
        :raises BrokerUnavailable: the broker cannot be reached.
        :raises BrokerError: the broker refused a task.
        """
        calls = [(item.key, TaskCall.from_payload(item.payload)) for item in items]
        await asyncio.to_thread(self._send, job.id, stage, calls)

    def _send(self, job_id: str, stage: str, calls: list[tuple[str, TaskCall]]) -> None:
        celery_app = self.celery_app
        try:
            with celery_app.producer_or_acquire() as producer:
                for key, call in calls:
                    options = dict(call.options)
                    if "ignore_result" not in options:
                        # As the task's own apply_async sends it: a task that
                        # ignores its result does not have the producer wait
                        # for one (a Redis result backend subscribes to each
                        # task's result otherwise). The registry is read as
                        # Celery's send_task reads it, without finalizing the
                        # app (which raises with autofinalize=False).
                        task = celery_app._tasks.get(call.task)
                        if task is not None:
                            options["ignore_result"] = task.ignore_result
                    headers = dict(options.pop("headers", None) or {})
                    headers[HEADER] = TaskRef(job_id, stage, key).header()
                    celery_app.send_task(
                        call.task,
                        args=list(call.args),
                        kwargs=dict(call.kwargs),
                        task_id=call.id_for(key),
                        headers=headers,
                        producer=producer,
                        add_to_parent=False,
                        **options,
                    )
        except OperationalError as exc:
            raise BrokerUnavailable(f"Celery's broker cannot be reached: {exc}") from exc
        except KombuError as exc:
            raise BrokerError(f"Celery's broker refused a task: {exc}") from exc

    def queue(self, stage: str) -> str:
        """The queue ``stage``'s tasks wait in."""
        queues = self.queues
        if isinstance(queues, str):
            return queues
        if queues is not None and stage in queues:
            return queues[stage]
        return str(self.celery_app.conf.task_default_queue)

    async def backlog(self, stage: str) -> int | None:
        """Tasks waiting in ``stage``'s queue (not those a worker holds):
        on Redis the length of the queue's lists (``LLEN``), elsewhere a
        passive ``queue_declare``'s message count (0 for a queue not declared
        yet); None when the broker cannot be asked."""
        return await asyncio.to_thread(self._depth, self.queue(stage))

    def _depth(self, queue: str) -> int | None:
        try:
            with self.celery_app.connection_for_write() as connection:
                channel = connection.channel()
                try:
                    if connection.transport.driver_type == "redis":
                        # The lengths of the queue's lists (one per priority
                        # step); a passive declare would ask EXISTS, which
                        # kombu does not prefix under a global_keyprefix.
                        return int(channel._size(queue))
                    declared = channel.queue_declare(queue=queue, passive=True)
                except ChannelError:  # no such queue: nothing waits in it
                    return 0
                finally:
                    with contextlib.suppress(Exception):  # a channel the refusal closed
                        channel.close()
                return int(declared.message_count)
        except Exception as exc:  # unknown, not an error of the monitor
            logger.warning(
                "depth of Celery queue %s unknown: %s",
                queue,
                exc,
                extra={"action": "backlog_unknown"},
            )
            return None


class CeleryJob:
    """A job being produced, whose items are Celery tasks: a context
    manager (entering creates the job; leaving without an error seals it;
    an error cancels it and propagates). See :meth:`CeleryTracking.start_job`.
    """

    def __init__(self, producer: SyncJobProducer) -> None:
        self._producer = producer

    @property
    def job(self) -> Job:
        """The job (as created, or as sealing left it).

        :raises InvalidRequest: not entered yet.
        """
        return self._producer.job

    def send(self, stage: str, signature: Signature, key: str | None = None) -> str:
        """Write the task to the ledger of ``stage``, then send it; its key
        (``key``, else its task id).

        :raises InvalidRequest: an unknown stage, an argument or option that
            is not JSON, a canvas (see :func:`item_of`), the job sealed.
        :raises Conflict: the job has ended meanwhile.
        :raises StoreUnavailable: the store cannot be reached.
        :raises BrokerError: the broker refused the task.
        """
        item = item_of(signature, key)
        self._producer.add(stage, [item])
        return item.key

    def send_group(
        self,
        stage: str,
        signatures: Iterable[Signature],
        keys: Iterable[str] | None = None,
    ) -> list[str]:
        """Send a ``group`` (or any iterable of signatures) as items of
        ``stage``, a batch at a time (each batch written to the ledger, then
        sent); their keys, in order. ``keys`` gives the items' keys in the
        same order (else their task ids). The group is not sent as a Celery
        group: each task is an item of its own.

        :raises InvalidRequest: as :meth:`send`, or fewer keys than tasks.
        :raises Conflict: the job has ended meanwhile.
        :raises StoreUnavailable: the store cannot be reached.
        :raises BrokerError: the broker refused a task.
        """
        tasks = getattr(signatures, "tasks", signatures)
        sent: list[str] = []
        self._producer.add(stage, self._items(tasks, keys, sent))
        return sent

    @staticmethod
    def _items(
        signatures: Iterable[Signature], keys: Iterable[str] | None, sent: list[str]
    ) -> Iterator[LedgerItem]:
        given = None if keys is None else iter(keys)
        for signature in signatures:
            key = None
            if given is not None:
                key = next(given, None)
                if key is None:
                    raise InvalidRequest("fewer keys than tasks")
            item = item_of(signature, key)
            sent.append(item.key)
            yield item

    def seal(self) -> Job:
        """Seal the job's stages now; the job.

        :raises Conflict: the job has ended meanwhile.
        """
        return self._producer.seal()

    def __enter__(self) -> CeleryJob:
        """Create the job."""
        self._producer.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Seal the job (no error) or cancel it (an error, which propagates)."""
        self._producer.__exit__(exc_type, exc, tb)


class CeleryTracking:
    """Celery tasks as the items of a jobtrack app's jobs: the producer's
    :meth:`start_job`, the sender of :meth:`job_type`'s types and, in a
    worker, :meth:`install`'s signal handlers (see the module).

    :param app: the jobtrack app (its store is where the counts go).
    :param celery_app: the Celery app the tasks are sent with.
    :param queues: as :class:`TaskSender`'s: where each stage's tasks wait.
    """

    def __init__(
        self,
        app: App,
        celery_app: Celery,
        *,
        queues: str | Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        self.celery_app = celery_app
        self.sender = TaskSender(celery_app, queues)
        self._counter: TaskCounter | None = None
        self.flush_before_ack = True

    @property
    def counter(self) -> TaskCounter:
        """The worker side's counter (made on first use).

        :raises InvalidRequest: the app's store is ``memory://``.
        """
        if self._counter is None:
            self._counter = TaskCounter(self.app)
        return self._counter

    def job_type(self, name: str, stages: Sequence[str], **options: Any) -> JobType:
        """Declare and register in the app a job type whose items are
        Celery tasks (``options`` as :class:`~jobtrack.jobs.types.JobType`'s,
        but ``sender``).

        :raises InvalidRequest: as :class:`~jobtrack.jobs.types.JobType`, or
            a type of that name registered already.
        """
        return self.app.job_type(name, stages, sender=self.sender, **options)

    def start_job(
        self, job_type: str | JobType, *, attributes: dict[str, Any] | None = None
    ) -> CeleryJob:
        """A new job of ``job_type`` to send Celery tasks as its items:
        ``with tracking.start_job("emails") as job: job.send(...)``.

        :raises InvalidRequest: (on enter) a type not registered; a store
            that is ``memory://``; called on the event loop the app is open on.
        """
        return CeleryJob(self.app.start_job_sync(job_type, attributes=attributes))

    def install(self, *, flush_before_ack: bool = True) -> None:
        """Count each item task's end from this worker, through Celery's
        signals: done on ``task_success``; failed on ``task_failure`` (the
        last attempt's: retries fire ``task_retry``, which touches the job)
        and on ``task_revoked`` (revoked, expired or terminated); a flush on
        ``worker_process_shutdown`` and ``worker_shutdown``. Nothing is
        connected that runs per task in the worker's main process: the
        failures Celery reports there without the task's request (a hard
        time limit, ``Reject(requeue=False)``) are counted from the worker's
        request that reports them (see :func:`worker_request`).

        :param flush_before_ack: for an item task that acks late
            (``acks_late``), block at its ``task_postrun`` until its count is
            durable, so that its message is acked only then (each such task
            waits for a store write; a process killed after an ack has lost
            none of its counts). False: the counts are written at the flush
            interval, coalesced, and those a killed process held are found
            missing by the monitor, which sends their tasks again.
        :raises InvalidRequest: the app's store is ``memory://``.
        """
        self.counter  # noqa: B018 - refuses a store in memory now, not per task
        self.flush_before_ack = flush_before_ack
        uid = f"jobtrack-{id(self)}"
        signals.task_success.connect(self._on_success, weak=False, dispatch_uid=uid)
        signals.task_failure.connect(self._on_failure, weak=False, dispatch_uid=uid)
        signals.task_retry.connect(self._on_retry, weak=False, dispatch_uid=uid)
        signals.task_revoked.connect(self._on_revoked, weak=False, dispatch_uid=uid)
        signals.task_postrun.connect(self._on_postrun, weak=False, dispatch_uid=uid)
        signals.worker_process_shutdown.connect(self._on_shutdown, weak=False, dispatch_uid=uid)
        signals.worker_shutdown.connect(self._on_shutdown, weak=False, dispatch_uid=uid)

    @staticmethod
    def _reported(request: Any) -> tuple[TaskRef, int] | None:
        """The reference and attempt of the task whose request (the task's
        context, or the worker's request of it) is ``request``."""
        ref = None if request is None else task_ref(request)
        if ref is None:
            return None
        fields = getattr(request, "request_dict", None)
        retries = (
            fields.get("retries") if isinstance(fields, Mapping) else getattr(request, "retries", 0)
        )
        try:
            attempts = int(retries or 0) + 1
        except (TypeError, ValueError):
            attempts = 1
        return ref, attempts

    def _on_success(self, sender: Task | None = None, **_: Any) -> None:
        if sender is None:
            return
        ref = task_ref(sender.request)
        if ref is not None:
            self.counter.done(ref)

    def _on_failure(
        self,
        sender: Task | None = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        request = None if sender is None else sender.request
        # The task's own request (in the pool process), else the worker's
        # request of it that reports the failure (in the main process).
        reported = self._reported(request) or self._reported(
            worker_request(task_id or getattr(request, "id", None))
        )
        if reported is None:
            return
        ref, attempts = reported
        self.counter.failed(ref, error_text(exception), attempts=attempts)

    def _on_retry(self, request: Any = None, **_: Any) -> None:
        ref = task_ref(request)
        if ref is not None:
            self.counter.retrying(ref)

    def _on_revoked(
        self,
        request: Any = None,
        terminated: bool = False,
        expired: bool = False,
        **_: Any,
    ) -> None:
        reported = self._reported(request) or self._reported(
            worker_request(getattr(request, "id", None))
        )
        if reported is None:
            return
        ref, attempts = reported
        reason = "terminated" if terminated else "expired" if expired else "revoked"
        self.counter.failed(ref, reason, attempts=attempts)

    def _on_postrun(self, sender: Task | None = None, task: Task | None = None, **_: Any) -> None:
        task = task or sender
        if task is None or not self.flush_before_ack or not task.acks_late:
            return
        if task_ref(task.request) is None:
            return
        if not self.counter.flush():
            logger.warning(
                "task %s acked with its count not yet durable",
                task.request.id,
                extra={"action": "count_not_durable_at_ack"},
            )

    def _on_shutdown(self, **_: Any) -> None:
        if self._counter is not None:
            self._counter.close()


def error_text(exception: BaseException | None) -> str:
    """A failed task's error as the ledger keeps it: ``Type: message``."""
    if exception is None:
        return "unknown error"
    return "".join(traceback.format_exception_only(type(exception), exception)).strip()
