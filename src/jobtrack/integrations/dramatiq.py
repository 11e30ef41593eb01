"""Dramatiq actors' messages as the items of jobtrack jobs.

Producer side::

    tracking = DramatiqTracking(app, broker)
    tracking.job_type("emails", stages=["send"], queues={"send": send_email.queue_name})
    with tracking.start_job("emails") as job:
        for user in users:
            job.send("send", send_email.message(user.id))

Worker side, in the module the ``dramatiq`` command loads::

    broker.add_middleware(JobtrackMiddleware(app))

An item's key is the one given, else the message's ``message_id``, which
Dramatiq keeps across redeliveries and retries. The ledger keeps the actor's
name, args, kwargs, options and queue (a :class:`~jobtrack.integrations.TaskCall`
whose id is the ``message_id``), and each message carries its
:class:`~jobtrack.integrations.TaskRef` as the message option ``"jobtrack"``.

The middleware counts a message when Dramatiq settles it, in its
``before_ack`` and ``before_nack`` hooks, which run after every middleware's
``after_process_message``: the message's final state decides, whatever the
order of the middleware. A message rejected (dead-lettered) failed for good,
with the error it raised; a message acked after its actor returned is done;
one acked after an exception was retried by the ``Retries`` middleware (a copy
is in the delay queue) is not counted, but its job is touched
(:meth:`~jobtrack.integrations.TaskCounter.retrying`) so that the monitor
does not take it for stuck while the copy waits.

Dramatiq acks late, and a counted message is acked (or rejected) only once
its count is durable, so a worker that dies before that leaves the message
unacked and RabbitMQ delivers it again. The worker threads do not wait for
it: when the worker boots, the middleware makes the broker's consumers
:class:`HeldConsumer` objects, whose ack of a counted message hands it to the
process's :class:`CountedAcks`; its thread reports the ends of the messages
handed over to the counter, flushes it (one store write for every message
that ended while the write before it ran), then settles those messages on
the consumer that delivered them. A consumer closed meanwhile (its
connection lost) settles nothing: RabbitMQ delivers its messages again.
The thread waits ``flush_linger`` seconds (50 ms) after the first
message it is handed before it flushes, or until it holds
:attr:`CountedAcks.flush_at` messages, so that one write covers more
messages: a write costs the store about as much for one count as for
dozens. Held messages take places of the prefetch, which gets as many more
(``held_prefetch``: Dramatiq's own prefetch, at least :data:`HELD_PREFETCH`).
A flush that does not end within ``flush_timeout``
(the store is down) settles its messages anyway, with a warning. A
stopping worker settles everything held before it closes its consumers. A
consumer not made by the middleware (it was added after the worker
started) has its worker thread wait for a flush shared with the others
(:class:`FlushGroup`) before the ack.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import dramatiq
import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name, q_name
from dramatiq.errors import BrokerError as DramatiqBrokerError
from dramatiq.errors import DramatiqError
from dramatiq.middleware import Middleware, Retries

from jobtrack.errors import BrokerError, InvalidRequest
from jobtrack.integrations.counter import TaskCounter
from jobtrack.integrations.tasks import HEADER, TaskCall, TaskRef
from jobtrack.jobs.producer import PRODUCER_BATCH
from jobtrack.jobs.sync import SyncJobProducer
from jobtrack.jobs.types import JobType
from jobtrack.model import Job
from jobtrack.store.ledger import LedgerItem

if TYPE_CHECKING:
    from jobtrack.runtime.app import App

__all__ = [
    "CountedAcks",
    "DramatiqJob",
    "DramatiqSender",
    "DramatiqTracking",
    "FlushGroup",
    "HeldConsumer",
    "JobtrackMiddleware",
    "message_for",
    "task_call",
]

logger = logging.getLogger(__name__)

#: The ledger option that records a message's queue.
QUEUE_OPTION = "queue_name"
#: The largest prefetch count AMQP allows.
MAX_PREFETCH = 65535
#: The fewest places a queue consumer's prefetch gets for the messages
#: that wait for their flush.
HELD_PREFETCH = 64
#: Seconds the acks thread waits, after the first message it is handed,
#: for more before it flushes.
FLUSH_LINGER = 0.05
#: Seconds between two tries to settle a message whose connection failed.
SETTLE_RETRY = 1.0


def task_call(message: dramatiq.Message[Any]) -> TaskCall:
    """What the ledger keeps of ``message``: its actor, args, kwargs, its
    options and queue (option ``queue_name``), and its ``message_id``.

    :raises InvalidRequest: an argument or option that is not JSON.
    """
    options = {k: v for k, v in message.options.items() if k != HEADER}
    options[QUEUE_OPTION] = message.queue_name
    call = TaskCall(
        message.actor_name, message.args, message.kwargs, options, task_id=message.message_id
    )
    call.payload()  # refuses what is not JSON, with the reason
    return call


def message_for(call: TaskCall, ref: TaskRef) -> dramatiq.Message[Any]:
    """The message that sends ``call`` (again) as the item ``ref``: the
    same ``message_id``, a fresh timestamp (so an age limit counts from this
    send), the reference in the option ``"jobtrack"``.

    :raises InvalidRequest: the call records no queue.
    """
    options = dict(call.options)
    queue = options.pop(QUEUE_OPTION, None)
    if not isinstance(queue, str) or not queue:
        raise InvalidRequest(f"the task {call.task!r} records no queue_name")
    options[HEADER] = ref.header()
    return dramatiq.Message(
        queue_name=queue,
        actor_name=call.task,
        args=tuple(call.args),
        kwargs=dict(call.kwargs),
        options=options,
        message_id=call.id_for(ref.key),
        message_timestamp=int(time.time() * 1000),
    )


class DramatiqSender:
    """The :class:`~jobtrack.jobs.types.ItemSender` of Dramatiq job types:
    enqueues each item's message on ``broker`` (the producer's sends and the
    monitor's re-drives), and tells a stage's queue depth.

    :param broker: the Dramatiq broker the messages go to.
    :param queues: the queues of each stage's actors, for :meth:`backlog`
        (a stage not named has an unknown backlog).
    """

    def __init__(
        self, broker: dramatiq.Broker, queues: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.broker = broker
        self.queues: dict[str, tuple[str, ...]] = {
            stage: tuple(names) for stage, names in (queues or {}).items()
        }

    async def send(self, job: Job, stage: str, items: Sequence[LedgerItem]) -> None:
        """Enqueue the message of each of ``items`` (in a thread: the broker
        blocks).

        :raises InvalidRequest: an item whose payload is not a task's.
        :raises BrokerError: the broker refused a message.
        """
        messages = [
            message_for(TaskCall.from_payload(item.payload), TaskRef(job.id, stage, item.key))
            for item in items
        ]
        await asyncio.to_thread(self._enqueue, messages)

    def _enqueue(self, messages: Sequence[dramatiq.Message[Any]]) -> None:
        for message in messages:
            try:
                self.broker.enqueue(message)
            except DramatiqError as exc:
                raise BrokerError(f"dramatiq refused {message.message_id}: {exc}") from exc

    async def backlog(self, stage: str) -> int | None:
        """The messages waiting in ``stage``'s queues and their delay queues
        (retries waiting for their backoff); None when the stage's queues are
        not known, the broker is not RabbitMQ or cannot be reached. Messages
        held by workers (unacked) are not in it: RabbitMQ does not tell them
        over AMQP."""
        names = self.queues.get(stage)
        if not names or not isinstance(self.broker, RabbitmqBroker):
            return None
        return await asyncio.to_thread(_depth, self.broker, names)


def _depth(broker: RabbitmqBroker, names: Sequence[str]) -> int | None:
    """Ready messages of ``names`` and their delay queues, by passive declares."""
    try:
        connection = pika.BlockingConnection(broker.parameters)
    except pika.exceptions.AMQPError as exc:
        logger.warning("queue depth unknown: %s", exc, extra={"action": "backlog_unknown"})
        return None
    total = 0
    try:
        for name in (queue for base in names for queue in (base, dq_name(base))):
            channel = connection.channel()
            try:
                declared = channel.queue_declare(name, passive=True)
                total += declared.method.message_count
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:  # no such queue: nothing waits
                continue
        return total
    except pika.exceptions.AMQPError as exc:
        logger.warning("queue depth unknown: %s", exc, extra={"action": "backlog_unknown"})
        return None
    finally:
        if connection.is_open:
            connection.close()


class DramatiqJob:
    """A job being produced (see :meth:`DramatiqTracking.start_job`): its
    messages are written to the ledger, then enqueued, a batch at a time
    (:data:`~jobtrack.jobs.producer.PRODUCER_BATCH`)."""

    def __init__(self, producer: SyncJobProducer) -> None:
        self.producer = producer
        self._waiting: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    @property
    def job(self) -> Job:
        """The job (as created, or as sealing left it)."""
        return self.producer.job

    @property
    def id(self) -> str:
        """The job's id."""
        return self.producer.job.id

    def send(self, stage: str, message: dramatiq.Message[Any], *, key: str | None = None) -> str:
        """Make ``message`` an item of ``stage``, keyed ``key`` (default: its
        ``message_id``); returns the key. It is enqueued once its batch is in
        the ledger: when :data:`PRODUCER_BATCH` wait, at :meth:`flush`, or
        when the ``with`` block ends.

        :raises InvalidRequest: an argument or option that is not JSON; or,
            for the batch it completes, as :meth:`flush`.
        """
        item_key = message.message_id if key is None else key
        batch = self._waiting.setdefault(stage, [])
        batch.append((item_key, task_call(message).payload()))
        if len(batch) >= PRODUCER_BATCH:
            self._send(stage)
        return item_key

    def flush(self) -> None:
        """Write the messages sent so far to the ledger and enqueue them.

        :raises InvalidRequest: an unknown stage, a key the ledger refuses.
        :raises Conflict: the job has ended meanwhile.
        :raises StoreUnavailable: the store cannot be reached.
        :raises BrokerError: the broker refused a message.
        """
        for stage in list(self._waiting):
            self._send(stage)

    def _send(self, stage: str) -> None:
        batch = self._waiting.pop(stage, [])
        if batch:
            self.producer.add(stage, batch)


class DramatiqTracking:
    """Dramatiq messages as the items of ``app``'s job types (see the module).

    :param app: the jobtrack app the job types are registered in.
    :param broker: the Dramatiq broker the messages go to.
    """

    def __init__(self, app: App, broker: dramatiq.Broker) -> None:
        self.app = app
        self.broker = broker

    def job_type(
        self,
        name: str,
        stages: Sequence[str],
        *,
        queues: Mapping[str, str | Sequence[str]] | None = None,
        **options: Any,
    ) -> JobType:
        """Register a job type whose items are Dramatiq messages: its sender
        is a :class:`DramatiqSender` on the broker. ``queues`` names each
        stage's queue (or queues), which the monitor's backlog reads;
        ``options`` as :class:`~jobtrack.jobs.types.JobType`'s.

        :raises InvalidRequest: as :meth:`jobtrack.App.job_type`.
        """
        named = {
            stage: (queue,) if isinstance(queue, str) else tuple(queue)
            for stage, queue in (queues or {}).items()
        }
        return self.app.job_type(name, stages, sender=DramatiqSender(self.broker, named), **options)

    @contextmanager
    def start_job(
        self, job_type: str | JobType, *, attributes: dict[str, Any] | None = None
    ) -> Iterator[DramatiqJob]:
        """A new job of ``job_type`` for plain synchronous code::

            with tracking.start_job("emails") as job:
                job.send("send", send_email.message(user_id))

        Leaving the block enqueues what waits and seals the job's totals; an
        error cancels the job and propagates.

        :raises InvalidRequest: as :meth:`jobtrack.App.start_job_sync`.
        """
        with self.app.start_job_sync(job_type, attributes=attributes) as producer:
            job = DramatiqJob(producer)
            yield job
            job.flush()

    def middleware(self) -> JobtrackMiddleware:
        """The worker side's middleware on this app (``broker.add_middleware(...)``)."""
        return JobtrackMiddleware(self.app)


class FlushGroup:
    """Makes a process's reported task ends durable for many threads at once.

    :meth:`wait` returns once a flush of ``counter`` that started after the
    call has ended: a thread that comes while a flush runs waits for the
    next one, which the first of the waiting threads starts and which covers
    them all.
    """

    def __init__(self, counter: TaskCounter) -> None:
        self.counter = counter
        self._cond = threading.Condition()
        self._started = 0
        self._ended = 0
        self._running = False
        self._durable = True
        self.flushes = 0
        """Flushes this group ran."""
        self.waiting = 0
        """Threads waiting now for a flush that another thread runs."""

    def wait(self, timeout: float | None = None) -> bool:
        """Block until what this process reported before the call is
        durable; False if a flush did not make it so within ``timeout``
        (default: the counter's); what is not durable is kept and written later."""
        with self._cond:
            needed = self._started + 1
            while self._ended < needed:
                if self._running:
                    self.waiting += 1
                    try:
                        self._cond.wait()
                    finally:
                        self.waiting -= 1
                    continue
                self._running = True
                self._started += 1
                number = self._started
                self._cond.release()
                durable = False
                try:
                    durable = self.counter.flush(timeout)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._ended = number
                    self._durable = durable
                    self.flushes += 1
                    self._cond.notify_all()
            return self._durable


class _Delivery(threading.local):
    """The message a worker thread runs: its id and the retries before it."""

    message_id: str | None = None
    retries: int = 0


class _Handing(threading.local):
    """The counted message whose ack (or nack) a thread is about to call,
    and how to report its end."""

    message: MessageProxy | None = None
    report: Callable[[], None] | None = None


#: The attribute of a message that names the :class:`HeldConsumer` it came from.
_ORIGIN = "_jobtrack_consumer"

#: Every :class:`CountedAcks` of the process, to reset after a fork.
_ACKS: weakref.WeakSet[CountedAcks] = weakref.WeakSet()


def _reset_acks_after_fork() -> None:
    for acks in list(_ACKS):
        acks._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_acks_after_fork)


class HeldConsumer(Consumer):
    """A consumer of the broker's (``broker.consume``) whose counted
    messages are settled by a :class:`CountedAcks`: :meth:`ack` and
    :meth:`nack` of a message the middleware counted hand it over and
    return at once; any other message is settled at once, as Dramatiq does.

    :param consumer: the broker's consumer, which receives and settles.
    :param acks: what settles the counted messages once durable.
    """

    def __init__(self, consumer: Consumer, acks: CountedAcks) -> None:
        self.consumer = consumer
        self.acks = acks
        self.lock = threading.Lock()
        """Held while this consumer settles or closes: no ack after the close."""
        self.closed = False
        """Whether :meth:`close` was called: its messages are not settled any more."""

    def __next__(self) -> MessageProxy | None:
        """The broker consumer's next message (None when none came), marked as
        this consumer's.

        :raises BrokerError: as the broker's consumer (Dramatiq's).
        """
        message = next(self.consumer)
        if message is not None:
            setattr(message, _ORIGIN, self)
        return message

    def ack(self, message: MessageProxy) -> None:
        """Ack ``message``: once its count is durable if the middleware
        counted it, else at once.

        :raises BrokerError: as the broker's consumer's ``ack``.
        """
        if not self.acks.take(message, nack=False):
            self.consumer.ack(message)

    def nack(self, message: MessageProxy) -> None:
        """Reject ``message``: once its count is durable if the middleware
        counted it, else at once.

        :raises BrokerError: as the broker's consumer's ``nack``.
        """
        if not self.acks.take(message, nack=True):
            self.consumer.nack(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """As the broker's consumer.

        :raises BrokerError: as the broker's consumer's ``requeue``.
        """
        self.consumer.requeue(messages)

    def close(self) -> None:
        """Close the broker's consumer. Held messages it delivered are not
        settled any more: its channel is gone, and the broker delivers them
        again (their counts are kept: a copy counts once).

        :raises BrokerError: as the broker's consumer's ``close``.
        """
        with self.lock:
            self.closed = True
        self.consumer.close()

    def settle(self, messages: Sequence[tuple[MessageProxy, bool]]) -> int:
        """Ack (or, with True, reject) ``messages`` on the broker's consumer;
        none once :meth:`close` was called. A connection error is retried
        every :data:`SETTLE_RETRY` seconds until the consumer is closed (as
        Dramatiq retries its own acks). Returns how many were settled; never
        raises (a message not settled is delivered again)."""
        settled = 0
        waiting = list(messages)
        while waiting:
            with self.lock:
                if self.closed:
                    return settled
                while waiting:
                    message, nack = waiting[0]
                    try:
                        if nack:
                            self.consumer.nack(message)
                        else:
                            self.consumer.ack(message)
                        settled += 1
                    except DramatiqBrokerError as exc:  # a connection lost, say
                        logger.warning(
                            "message %s not settled yet (%s): retried in %g s unless its "
                            "consumer closes",
                            message.message_id,
                            exc,
                            SETTLE_RETRY,
                            extra={"action": "settle_retried"},
                        )
                        break
                    except Exception:  # not Dramatiq's: not retried
                        logger.exception("message %s not settled", message.message_id)
                    waiting.pop(0)
            if waiting:
                time.sleep(SETTLE_RETRY)
        return settled


_Held = tuple[HeldConsumer, MessageProxy, bool, Callable[[], None]]
"""A message handed over: its consumer, itself, whether it is rejected, its report."""


class CountedAcks:
    """Settles the messages a process's :class:`JobtrackMiddleware` counted,
    once their counts are durable, from a thread of its own: the worker
    threads hand a message over and go on to the next one.

    The thread waits ``flush_linger`` seconds after the first message it is
    handed (not when the worker stops), or until :attr:`flush_at` are
    held, takes every message held then,
    reports their ends to the counter (so a worker thread does not even wake the counter's loop),
    flushes the counter
    (:meth:`TaskCounter.flush <jobtrack.integrations.TaskCounter.flush>`:
    one store write for them all), then acks (or rejects) each one on the
    consumer that delivered it. Messages that end during a flush wait for
    the next one. A flush that does not end within ``flush_timeout`` seconds
    (the store is down) settles its messages anyway, with a warning: their
    counts stay in the process and are written when the store is back.

    Installed on a broker (:meth:`install`), every consumer the worker makes
    is a :class:`HeldConsumer`.

    A message held waits unacked, so it takes a place of the consumer's
    prefetch: each consumer of a queue (not of a delay queue, whose
    messages are not counted) gets ``held_prefetch`` more places, so that
    the worker threads have as many messages to start as Dramatiq means
    them to have while others wait for their flush.

    :param counter: the counter whose flushes make the counts durable.
    :param flush_timeout: seconds a flush waits at most.
    :param held_prefetch: places added to each queue consumer's prefetch
        (default: as many as Dramatiq's prefetch, twice its worker threads,
        and at least :data:`HELD_PREFETCH`).
    :param flush_linger: seconds to wait for more messages before a flush.
    """

    def __init__(
        self,
        counter: TaskCounter,
        *,
        flush_timeout: float = 30.0,
        held_prefetch: int | None = None,
        flush_linger: float = FLUSH_LINGER,
    ) -> None:
        self.counter = counter
        self.flush_timeout = flush_timeout
        self.held_prefetch = held_prefetch
        self.flush_linger = flush_linger
        places = HELD_PREFETCH if held_prefetch is None else held_prefetch
        self.flush_at = max(1, places * 3 // 4)
        """Messages held that start a flush at once, before the linger is up:
        three quarters of the places added to a consumer's prefetch, so that
        its worker threads still get messages while the flush runs."""
        self.flushes = 0
        """Flushes this process ran before settling."""
        self.settled = 0
        """Messages acked or rejected after their flush."""
        self.not_durable = 0
        """Messages settled after a flush that did not make them durable."""
        self.lost = 0
        """Messages not settled: their consumer was closed (the broker delivers them again)."""
        self._handing = _Handing()
        self._consume: Callable[..., Consumer] | None = None
        self._after_fork()
        _ACKS.add(self)

    def _after_fork(self) -> None:
        # A fork copies neither the thread nor a condition another thread
        # held: the child starts with none held and a thread of its own.
        self._cond = threading.Condition()
        self._held: list[_Held] = []
        self._since = 0.0  # time.monotonic() when the oldest message held came
        self._draining = 0  # threads in drain(): the linger is cut short
        self._settling = 0  # messages of the flush that runs
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> int:
        """Messages handed over and not settled yet (waiting for their
        flush, or in the flush that runs)."""
        with self._cond:
            return len(self._held) + self._settling

    def install(self, broker: dramatiq.Broker) -> None:
        """Make every consumer ``broker`` opens from now on a
        :class:`HeldConsumer` of this object (a worker's consumers: call it
        before the worker starts)."""
        if self._consume is not None:
            return
        original = broker.consume

        def consume(queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Consumer:
            if q_name(queue_name) == queue_name:  # not a delay queue: its messages are counted
                extra = self.held_prefetch
                if extra is None:
                    extra = max(prefetch, HELD_PREFETCH)
                prefetch = min(prefetch + extra, MAX_PREFETCH)
            return HeldConsumer(original(queue_name, prefetch, timeout), self)

        self._consume = consume
        setattr(broker, "consume", consume)  # noqa: B010 - an instance's own method

    def uninstall(self, broker: dramatiq.Broker) -> None:
        """Give ``broker`` its own consumers back (unless another wrapper
        replaced ours since)."""
        if self._consume is not None and vars(broker).get("consume") is self._consume:
            del broker.consume
        self._consume = None

    def hold(self, message: MessageProxy, report: Callable[[], None]) -> bool:
        """Called from the hook before the ack or nack of ``message``, on
        the thread that then settles it, with what reports its end to the
        counter (``counter.done(ref)``, say): True if its consumer's ack or
        nack will hand it over (it came from a :class:`HeldConsumer` of this
        object), and this object's thread then calls ``report`` before the
        flush that makes it durable; False if the caller must report it and
        wait for the count itself."""
        origin = getattr(message, _ORIGIN, None)
        if not isinstance(origin, HeldConsumer) or origin.acks is not self:
            return False
        handing = self._handing
        handing.message = message
        handing.report = report
        return True

    def take(self, message: MessageProxy, *, nack: bool) -> bool:
        """Take ``message`` from a :class:`HeldConsumer`'s ack (or nack):
        True if it was counted (see :meth:`hold`) and is now settled once
        durable, on the consumer that delivered it (not on one opened since,
        whose delivery tags are others)."""
        handing = self._handing
        report = handing.report
        if handing.message is not message or report is None:
            return False
        handing.message = handing.report = None
        origin = getattr(message, _ORIGIN)
        with self._cond:
            held = self._held
            held.append((origin, message, nack, report))
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="jobtrack-acks", daemon=True)
                self._thread.start()
            # The thread is woken for the first message (its linger starts)
            # and for the one that makes a full batch, not for each one: a
            # wake-up per message would end the linger at the second.
            if len(held) == 1:
                self._since = time.monotonic()
                self._cond.notify_all()
            elif len(held) == self.flush_at:
                self._cond.notify_all()
        return True

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._held and not self._stopping:
                    cond.wait()
                if not self._held:  # stopped: the next message held starts another
                    self._thread = None
                    return
                # More messages for this write: until the first one held has
                # waited flush_linger seconds, or a full batch is held.
                deadline = self._since + self.flush_linger
                while not self._stopping and not self._draining and len(self._held) < self.flush_at:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    cond.wait(left)
                batch, self._held = self._held, []
                self._settling = len(batch)
            try:
                self._settle(batch)
            finally:
                with cond:
                    self._settling = 0
                    cond.notify_all()

    def _settle(self, batch: list[_Held]) -> None:
        # The ends reported here are taken by the flush that follows: the
        # counter's thread is woken once for them.
        with self.counter.gathering():
            for _, message, _, report in batch:
                try:
                    report()
                except Exception:  # the counter's reports do not raise; another's might
                    logger.exception("the end of message %s not reported", message.message_id)
            try:
                durable = self.counter.flush(self.flush_timeout)
            except Exception:  # settled anyway: the monitor re-drives what is missing
                logger.exception("counts of this process not flushed")
                durable = False
        self.flushes += 1
        if not durable:
            self.not_durable += len(batch)
            logger.warning(
                "%d messages settled before their counts were durable",
                len(batch),
                extra={"action": "count_not_durable"},
            )
        by_origin: dict[int, tuple[HeldConsumer, list[tuple[MessageProxy, bool]]]] = {}
        for origin, message, nack, _ in batch:
            by_origin.setdefault(id(origin), (origin, []))[1].append((message, nack))
        for origin, messages in by_origin.values():
            settled = origin.settle(messages)
            self.settled += settled
            if settled < len(messages):
                self.lost += len(messages) - settled
                logger.info(
                    "%d messages not settled: their consumer is closed, the broker "
                    "delivers them again",
                    len(messages) - settled,
                    extra={"action": "settle_lost"},
                )

    def drain(self, timeout: float | None = None) -> bool:
        """Block until every message held so far is settled (flushed, then
        acked or rejected, without waiting out the linger); False if that
        is not so within ``timeout`` seconds (default: ``flush_timeout`` and
        5 s more)."""
        wait = self.flush_timeout + 5.0 if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._cond:
            self._draining += 1
            self._cond.notify_all()
            try:
                while self._held or self._settling:
                    if self._thread is None or not self._thread.is_alive():
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._draining -= 1
            if self._held:  # no thread settles them (a forked process)
                batch, self._held = self._held, []
            else:
                return True
        self._settle(batch)
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Settle what is held (see :meth:`drain`), then end the thread
        (the next message held starts another); False if not all was settled
        within ``timeout``."""
        drained = self.drain(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)
        return drained


class JobtrackMiddleware(Middleware):
    """Counts each message that carries a :class:`~jobtrack.integrations.TaskRef`
    once, when it ends (see the module), and acks it once its count is durable.

    In a worker (``before_worker_boot``), the broker's consumers become
    :class:`HeldConsumer` objects: a counted message is handed to the process's
    :class:`CountedAcks` (:attr:`acks`), which acks it after a flush, and the
    worker thread goes on at once. A message from a consumer that is not
    one (the middleware was added after the worker started) is acked by its
    worker thread once a shared flush (:class:`FlushGroup`) has ended.

    :param counter: a :class:`~jobtrack.integrations.TaskCounter`, or the
        jobtrack app to make one on.
    :param flush_timeout: seconds a flush waits at most for the counts to be
        durable (the store is down, say); then its messages are acked anyway,
        with a warning, their counts kept and written when the store is back.
    :param held_prefetch: places added to the prefetch of each consumer of
        a queue for the messages that wait for their flush (see
        :class:`CountedAcks`; default: as many as Dramatiq's prefetch, at
        least :data:`HELD_PREFETCH`).
    :param flush_linger: seconds the acks thread waits for more messages
        before a flush (see :class:`CountedAcks`).
    :raises InvalidRequest: an app whose store is ``memory://``.
    """

    def __init__(
        self,
        counter: TaskCounter | App,
        *,
        flush_timeout: float = 30.0,
        held_prefetch: int | None = None,
        flush_linger: float = FLUSH_LINGER,
    ) -> None:
        self.counter = counter if isinstance(counter, TaskCounter) else TaskCounter(counter)
        self.flush_timeout = flush_timeout
        self.group = FlushGroup(self.counter)
        self.acks = CountedAcks(
            self.counter,
            flush_timeout=flush_timeout,
            held_prefetch=held_prefetch,
            flush_linger=flush_linger,
        )
        self._delivery = _Delivery()

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Make the consumers the worker opens :class:`HeldConsumer` objects
        (Dramatiq's hook, before the worker opens any)."""
        self.acks.install(broker)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Note the attempt this run is (Dramatiq's hook)."""
        self._delivery.message_id = message.message_id
        self._delivery.retries = int(message.options.get("retries", 0))

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Forget the run of a skipped message: acked, it is not counted (a
        middleware that skips a message without failing it means it to end
        unseen); rejected, it counts failed (Dramatiq's hook)."""
        if self._delivery.message_id == message.message_id:
            self._delivery.message_id = None

    def before_ack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Count a message whose actor returned done, or one that raised
        and that no ``Retries`` middleware retries failed, and have it acked
        once the count is durable (Dramatiq's hook, before the ack)."""
        attempts = self._attempts(message)
        if attempts is None:  # not run here: a delayed message moved on, a skip
            return
        ref = TaskRef.from_header(message.options.get(HEADER))
        if ref is None:
            return
        error = message._exception
        if error is None:
            self._count(message, partial(self.counter.done, ref))
        elif any(isinstance(m, Retries) for m in broker.middleware):
            # Retried: a copy waits in the delay queue; the job is touched
            # so that the monitor does not send it again meanwhile.
            self.counter.retrying(ref)
        else:
            failed = partial(self.counter.failed, ref, _describe(error), attempts=attempts)
            self._count(message, failed)

    def before_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Count a rejected (dead-lettered) message failed, with its error,
        and have it rejected once the count is durable (Dramatiq's hook,
        before the nack)."""
        attempts = self._attempts(message)
        ref = TaskRef.from_header(message.options.get(HEADER))
        if ref is None:
            return
        if attempts is None:
            attempts = int(message.options.get("retries", 0)) + 1
        error = message._exception
        reason = _describe(error) if error is not None else "rejected by a dramatiq middleware"
        self._count(message, partial(self.counter.failed, ref, reason, attempts=attempts))

    def _attempts(self, message: MessageProxy) -> int | None:
        """The attempt the message's run was, if it ran on this thread."""
        delivery = self._delivery
        if delivery.message_id != message.message_id:
            return None
        delivery.message_id = None
        return delivery.retries + 1

    def _count(self, message: MessageProxy, report: Callable[[], None]) -> None:
        """Have ``message``'s end reported (``report``) and the message
        settled once its count is durable: by the process's :attr:`acks` if
        its consumer hands it over, else here, waiting for a flush."""
        if self.acks.hold(message, report):
            return
        report()
        try:
            durable = self.group.wait(self.flush_timeout)
        except Exception:  # the ack goes on: the monitor re-drives what is missing
            logger.exception("counts of this process not flushed")
            durable = False
        if not durable:
            logger.warning(
                "message %s acked before its count was durable",
                message.message_id,
                extra={"action": "count_not_durable"},
            )

    def before_consumer_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        """Settle every message held, before the worker closes its consumers
        (Dramatiq's hook: the worker threads have stopped by then)."""
        if not self.acks.drain():
            logger.warning(
                "messages still held at shutdown: the broker delivers them again",
                extra={"action": "held_at_shutdown"},
            )

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Settle what is still held, give the broker its own consumers back,
        write what this process counted and close the counter (Dramatiq's hook)."""
        self.acks.stop()
        self.acks.uninstall(broker)
        self.counter.close(self.flush_timeout)
        acks = self.acks
        logger.info(
            "%d messages acked after %d flushes (%d before their counts were durable, "
            "%d left to be delivered again)",
            acks.settled,
            acks.flushes,
            acks.not_durable,
            acks.lost,
            extra={"action": "acks_at_shutdown"},
        )


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
