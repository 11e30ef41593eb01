"""The in-process broker (``memory://``): asyncio queues in one process.

It keeps the semantics that matter for tracking: a message is in flight
until acked, a nack may requeue it (delivered again, with its count raised),
a rejected message lands in the queue's dead-letter list, and a handler
leaves nothing unsettled (:mod:`jobtrack.broker.settle`). For tests,
:meth:`InMemoryBroker.drop_connection` does what a lost connection does to
a RabbitMQ consumer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from jobtrack.broker.base import (
    MAX_HELD_DEAD,
    DeadMessage,
    Handler,
    QueueStats,
    clip,
    dead_letter_queue,
    is_dead_letter_queue,
)
from jobtrack.broker.settle import SettleOnce, log_dead_letter, run_handler
from jobtrack.errors import BrokerError, NotFound, TooManyDeadLetters
from jobtrack.model import utc_now

__all__ = ["DeadLetter", "InMemoryBroker"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message and why it was rejected; its ``id`` and the
    moment it died (``died_at``) are left out of comparisons."""

    body: bytes
    reason: str
    delivery_count: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False)
    died_at: datetime | None = field(default=None, compare=False)

    def listed(self) -> DeadMessage:
        """This dead letter as a broker lists it."""
        return DeadMessage(self.id, self.body, self.reason, self.delivery_count, self.died_at)


@dataclass(slots=True)
class _Message:
    body: bytes
    delivery_count: int = 0
    queued_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Queue:
    ready: asyncio.Queue[_Message] = field(default_factory=asyncio.Queue)
    unacked: int = 0


class _Channel:
    """What a subscription receives on until the connection drops: while it
    is open, its deliveries settle their messages; once closed, their
    messages are back in the queue and settling them does nothing more."""

    __slots__ = ("open", "unsettled")

    def __init__(self) -> None:
        self.open = True
        self.unsettled: dict[_MemoryDelivery, _Message] = {}


class _MemoryDelivery(SettleOnce[_Message]):
    __slots__ = ("_broker", "_channel", "_count")

    def __init__(
        self, broker: InMemoryBroker, queue: str, message: _Message, channel: _Channel
    ) -> None:
        super().__init__(queue, message)
        self._broker = broker
        self._channel = channel
        self._count = message.delivery_count  # the message's own goes on if it is redelivered
        channel.unsettled[self] = message

    @property
    def delivery_count(self) -> int:
        return self._count

    async def ack(self) -> None:
        self._settle_held()

    async def nack(self, *, requeue: bool, reason: str = "") -> None:
        held = self._settle_held()
        if not requeue:  # a copy, as RabbitMQ's dead-letter publish goes out on any channel
            self._broker.dead_letter(self._queue, self._message.body, self._count, reason)
        elif held:
            self._broker.queue(self._queue).ready.put_nowait(self._message)

    async def retry(self, body: bytes) -> None:
        self._settle_held()
        self._broker.queue(self._queue).ready.put_nowait(_Message(body))

    def _settle_held(self) -> bool:
        """Mark the delivery settled; whether its message was still held
        (not taken back with a dropped connection)."""
        self._settle()
        if not self._channel.open:
            return False
        del self._channel.unsettled[self]
        self._broker.queue(self._queue).unacked -= 1
        return True


class _MemorySubscription:
    def __init__(self, broker: InMemoryBroker, queue: str, handler: Handler, prefetch: int) -> None:
        self._broker = broker
        self._queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self.channel = _Channel()
        self.tasks: list[asyncio.Task[None]] = []
        self.busy: set[asyncio.Task[None]] = set()  # tasks running a handler
        self.stopping = False

    @property
    def queue(self) -> str:
        """The queue this subscription consumes."""
        return self._queue

    def start(self) -> None:
        """Start ``prefetch`` tasks taking messages on the current channel."""
        self.tasks = [task for task in self.tasks if not task.done()]
        self.tasks += [
            asyncio.create_task(self._deliver(self.channel), name=f"consume:{self._queue}:{i}")
            for i in range(self._prefetch)
        ]

    def reconnect(self) -> None:
        """Close the channel (its unsettled messages go back to the queue,
        their handlers run on) and consume on a new one."""
        if self.stopping:
            return
        old, self.channel = self.channel, _Channel()
        old.open = False
        state = self._broker.queue(self._queue)
        for message in old.unsettled.values():
            state.unacked -= 1
            state.ready.put_nowait(message)
        old.unsettled.clear()
        for task in self.tasks:
            if task not in self.busy:  # idle: waiting for a message
                task.cancel()
        self.start()

    async def cancel(self, *, grace: float = 0.0) -> None:
        self.stopping = True
        for task in self.tasks:
            if task not in self.busy:
                task.cancel()
        if grace > 0 and self.busy:
            await asyncio.wait(set(self.busy), timeout=grace)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _deliver(self, channel: _Channel) -> None:
        state = self._broker.queue(self._queue)
        me = asyncio.current_task()
        assert me is not None
        while not self.stopping and channel.open:
            message = await state.ready.get()
            message.delivery_count += 1
            state.unacked += 1
            delivery = _MemoryDelivery(self._broker, self._queue, message, channel)
            self.busy.add(me)
            try:
                await run_handler(self._handler, delivery, self._queue)
            finally:
                self.busy.discard(me)


class InMemoryBroker:
    """A :class:`~jobtrack.broker.base.Broker` inside one process."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._subscriptions: list[_MemorySubscription] = []
        self.dead_letters: dict[str, list[DeadLetter]] = {}

    def queue(self, name: str) -> _Queue:
        """The queue called ``name``, created on first use."""
        if name not in self._queues:
            self._queues[name] = _Queue()
        return self._queues[name]

    def dead_letter(self, queue: str, body: bytes, delivery_count: int, reason: str) -> None:
        """Keep a rejected message in the queue's dead-letter list."""
        target = dead_letter_queue(queue)
        letter = DeadLetter(body, reason, delivery_count, died_at=utc_now())
        self.dead_letters.setdefault(target, []).append(letter)
        log_dead_letter(queue, reason)

    async def publish(self, queue: str, body: bytes) -> None:
        """Put the message on the queue."""
        self.queue(queue).ready.put_nowait(_Message(body))

    async def publish_many(self, queue: str, bodies: Iterable[bytes]) -> None:
        """Put the messages on the queue."""
        for body in bodies:
            self.queue(queue).ready.put_nowait(_Message(body))

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> _MemorySubscription:
        """Run ``prefetch`` handlers concurrently over the queue.

        :raises BrokerError: ``prefetch`` is below 1.
        """
        if prefetch < 1:
            raise BrokerError(f"prefetch must be at least 1, not {prefetch}")
        subscription = _MemorySubscription(self, queue, handler, prefetch)
        subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    async def drop_connection(self) -> None:
        """Do what a lost connection does to a RabbitMQ consumer: every
        message delivered and not yet settled goes back to its queue at once
        (delivered again, its count raised), its handler runs on, and
        settling that delivery afterwards changes nothing, but for what
        RabbitMQ publishes on another channel: a dead-letter copy, or the
        body of a retry, is published all the same (the message is then
        delivered again *and* dead-lettered, or retried); every
        subscription goes on consuming."""
        for subscription in self._subscriptions:
            subscription.reconnect()

    def consumers(self, queue: str) -> int:
        """How many subscriptions consume ``queue``, cancelled ones left out
        (what RabbitMQ reports as the queue's consumer count)."""
        return sum(1 for s in self._subscriptions if s.queue == queue and not s.stopping)

    async def in_flight(self, queue: str) -> int:
        """Messages queued or delivered and not yet settled."""
        state = self.queue(queue)
        return state.ready.qsize() + state.unacked

    async def queue_stats(self, queue: str) -> QueueStats:
        """The queue's ready messages, consumers, unsettled deliveries and the
        age of its oldest ready message (a dead-letter queue's: its oldest
        dead letter's); a queue never used has none of them."""
        if is_dead_letter_queue(queue):
            letters = self.dead_letters.get(queue, [])
            oldest = min((d.died_at for d in letters if d.died_at is not None), default=None)
            age = None if oldest is None else max((utc_now() - oldest).total_seconds(), 0.0)
            return QueueStats(queue, len(letters), self.consumers(queue), 0, age)
        state = self._queues.get(queue)
        if state is None:
            return QueueStats(queue, 0, self.consumers(queue), 0, None)
        ready: deque[_Message] = getattr(state.ready, "_queue")  # noqa: B009 (asyncio's own)
        age = max(time.monotonic() - ready[0].queued_at, 0.0) if ready else None
        return QueueStats(queue, state.ready.qsize(), self.consumers(queue), state.unacked, age)

    async def dead_messages(self, queue: str, *, limit: int) -> list[DeadMessage]:
        """The first ``limit`` dead letters of ``queue``, oldest first.

        :raises TooManyDeadLetters: more than :data:`MAX_HELD_DEAD`, as on RabbitMQ.
        """
        letters = self._held(queue)
        return [letter.listed() for letter in letters[: max(limit, 0)]]

    def _held(self, queue: str) -> list[DeadLetter]:
        letters = self.dead_letters.get(dead_letter_queue(queue), [])
        if len(letters) > MAX_HELD_DEAD:
            raise TooManyDeadLetters(
                f"{dead_letter_queue(queue)} holds {len(letters)} dead letters, more than"
                f" the {MAX_HELD_DEAD} listed, sent back or dropped at once"
            )
        return letters

    async def settle_dead(
        self, queue: str, ids: Collection[str] | None, *, requeue: bool, most: int | None = None
    ) -> list[DeadMessage]:
        """Take the dead letters ``ids`` (None: all, or the first ``most``)
        of ``queue``: requeued (their bodies put back on ``queue``) or dropped.

        :raises NotFound: an id is not among them (nothing is taken).
        :raises TooManyDeadLetters: more than :data:`MAX_HELD_DEAD`, as on RabbitMQ.
        """
        letters = self._held(queue)
        chosen = set(ids) if ids is not None else {letter.id for letter in letters[:most]}
        missing = sorted(chosen.difference(letter.id for letter in letters))
        if missing:
            raise NotFound(
                f"no dead letter {clip(', '.join(missing))} in {dead_letter_queue(queue)}"
            )
        taken = [letter for letter in letters if letter.id in chosen]
        kept = [letter for letter in letters if letter.id not in chosen]
        if letters:
            self.dead_letters[dead_letter_queue(queue)] = kept
        if requeue:
            for letter in taken:
                self.queue(queue).ready.put_nowait(_Message(letter.body))
        return [letter.listed() for letter in taken]

    async def failed(self) -> BrokerError:
        """Never returns: the in-process broker cannot fail apart from its process."""
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Stop every consumer."""
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._subscriptions.clear()
