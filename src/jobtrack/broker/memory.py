"""The in-process broker (``memory://``): asyncio queues in one process.

It keeps the semantics that matter for tracking: a message is in flight
until acked, a nack may requeue it (delivered again, with its count raised),
and a rejected message lands in the queue's dead-letter list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from jobtrack.broker.base import Handler, clip, dead_letter_queue, handler_failure
from jobtrack.errors import BrokerError

__all__ = ["DeadLetter", "InMemoryBroker"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message and why it was rejected."""

    body: bytes
    reason: str
    delivery_count: int


@dataclass(slots=True)
class _Message:
    body: bytes
    delivery_count: int = 0


@dataclass(slots=True)
class _Queue:
    ready: asyncio.Queue[_Message] = field(default_factory=asyncio.Queue)
    unacked: int = 0


class _MemoryDelivery:
    __slots__ = ("_broker", "_message", "_queue", "_settled")

    def __init__(self, broker: InMemoryBroker, queue: str, message: _Message) -> None:
        self._broker = broker
        self._queue = queue
        self._message = message
        self._settled = False

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def delivery_count(self) -> int:
        return self._message.delivery_count

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        self._settle()

    async def nack(self, *, requeue: bool, reason: str = "") -> None:
        self._settle()
        if requeue:
            self._broker.queue(self._queue).ready.put_nowait(self._message)
        else:
            self._broker.dead_letter(self._queue, self._message, reason)

    async def retry(self, body: bytes) -> None:
        self._settle()
        self._broker.queue(self._queue).ready.put_nowait(_Message(body))

    def _settle(self) -> None:
        if self._settled:
            raise BrokerError("delivery already acked or nacked")
        self._settled = True
        self._broker.queue(self._queue).unacked -= 1


class _MemorySubscription:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.busy: set[asyncio.Task[None]] = set()  # tasks running a handler
        self.stopping = False

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

    def dead_letter(self, queue: str, message: _Message, reason: str) -> None:
        """Keep a rejected message in the queue's dead-letter list."""
        target = dead_letter_queue(queue)
        self.dead_letters.setdefault(target, []).append(
            DeadLetter(message.body, reason, message.delivery_count)
        )
        logger.warning(
            "dead-lettered a message from %s: %s",
            queue,
            clip(reason, 1000),
            extra={"action": "dead_letter", "queue": queue},
        )

    async def publish(self, queue: str, body: bytes) -> None:
        """Put the message on the queue."""
        self.queue(queue).ready.put_nowait(_Message(body))

    async def publish_many(self, queue: str, bodies: Iterable[bytes]) -> None:
        """Put the messages on the queue."""
        for body in bodies:
            self.queue(queue).ready.put_nowait(_Message(body))

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> _MemorySubscription:
        """Run ``prefetch`` handlers concurrently over the queue."""
        if prefetch < 1:
            raise BrokerError(f"prefetch must be at least 1, not {prefetch}")
        subscription = _MemorySubscription()
        subscription.tasks = [
            asyncio.create_task(
                self._deliver(queue, handler, subscription), name=f"consume:{queue}:{i}"
            )
            for i in range(prefetch)
        ]
        self._subscriptions.append(subscription)
        return subscription

    async def in_flight(self, queue: str) -> int:
        """Messages queued or delivered and not yet settled."""
        state = self.queue(queue)
        return state.ready.qsize() + state.unacked

    async def failed(self) -> BrokerError:
        """Never returns: the in-process broker cannot fail apart from its process."""
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Stop every consumer."""
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._subscriptions.clear()

    async def _deliver(
        self, queue: str, handler: Handler, subscription: _MemorySubscription
    ) -> None:
        state = self.queue(queue)
        me = asyncio.current_task()
        assert me is not None
        while not subscription.stopping:
            message = await state.ready.get()
            message.delivery_count += 1
            state.unacked += 1
            delivery = _MemoryDelivery(self, queue, message)
            subscription.busy.add(me)
            try:
                await handler(delivery)
            except asyncio.CancelledError:
                if not delivery.settled:
                    await delivery.nack(requeue=True)
                raise
            except Exception as exc:
                reason, trace = handler_failure(exc)
                logger.error("handler failed on a message from %s\n%s", queue, trace)
                if not delivery.settled:
                    await delivery.nack(requeue=False, reason=reason)
            else:
                if not delivery.settled:
                    await delivery.nack(requeue=False, reason="handler returned without settling")
            finally:
                subscription.busy.discard(me)
