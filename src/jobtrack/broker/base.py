"""The broker port: publish to a named queue; consume with ack and nack.

Delivery is at least once: a message not acked before its consumer goes away
is delivered again, so whoever counts must count each item once.
"""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from jobtrack.errors import BrokerError

__all__ = [
    "MAX_HELD_DEAD",
    "Broker",
    "DeadMessage",
    "Delivery",
    "Handler",
    "QueueStats",
    "Subscription",
    "clip",
    "dead_letter_queue",
    "dead_message_id",
    "handler_failure",
    "is_dead_letter_queue",
]

_DEAD = ".dead"


def dead_letter_queue(queue: str) -> str:
    """Where messages rejected from ``queue`` go."""
    return f"{queue}{_DEAD}"


def is_dead_letter_queue(queue: str) -> bool:
    """Whether ``queue`` is where another queue's rejected messages go."""
    return queue.endswith(_DEAD)


MAX_HELD_DEAD = 10_000
"""At most this many dead letters of one queue are listed, sent back or
dropped: a broker holds them all at once, in memory, to keep their order."""


LOGGED_TEXT = 300
"""At most this many characters of a message's text (a reason, an error)
go into a log line or a dead letter's reason: a huge message must not
make a huge log."""


def clip(text: str, limit: int = LOGGED_TEXT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def handler_failure(exc: BaseException) -> tuple[str, str]:
    """A handler's exception as (reason, traceback): the reason its clipped
    ``repr`` for the dead letter, the traceback its frames (bounded by the
    code) followed by that reason, never the whole of a huge message."""
    reason = clip(f"handler error: {exc!r}")
    frames = "".join(traceback.format_tb(exc.__traceback__))
    return reason, f"Traceback (most recent call last):\n{frames}{reason}"


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What a broker tells of one queue: ``messages`` ready, ``consumers``
    subscribed, ``unacked`` (delivered, not yet settled) and the age of the
    oldest message in seconds; each of the last two None where the broker
    does not tell. A queue that does not exist has no messages and no
    consumers."""

    queue: str
    messages: int
    consumers: int
    unacked: int | None = None
    oldest_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class DeadMessage:
    """One message of a dead-letter queue: its stable ``id``, the message as
    it was published, why it was rejected, how often it had been delivered
    (None where the queue does not count) and when it died (None when
    unknown)."""

    id: str
    body: bytes
    reason: str
    delivery_count: int | None
    died_at: datetime | None


def dead_message_id(body: bytes, headers: Mapping[str, Any] | None = None) -> str:
    """The id of a dead letter that was given none when it died: derived
    from its body and headers, so the same message has the same id at every
    listing (two identical messages share it, and are acted on together)."""
    digest = hashlib.sha256(body)
    for key in sorted(headers or {}):
        digest.update(b"\x00" + key.encode() + b"\x00" + repr((headers or {})[key]).encode())
    return "d-" + digest.hexdigest()[:24]


class Delivery(Protocol):
    """One delivery of one message; settle it exactly once."""

    @property
    def body(self) -> bytes:
        """The message as published."""
        ...

    @property
    def delivery_count(self) -> int:
        """1 on the first delivery, 2 on the first redelivery, and so on."""
        ...

    async def ack(self) -> None:
        """The message is handled; forget it."""
        ...

    async def nack(self, *, requeue: bool, reason: str = "") -> None:
        """Deliver it again (``requeue``) or dead-letter it with ``reason``."""
        ...

    async def retry(self, body: bytes) -> None:
        """Settle this delivery by putting ``body`` (the message with its
        attempt counted) at the back of the queue: a retry that counts on any
        queue type, whether or not the broker counts redeliveries."""
        ...


Handler = Callable[[Delivery], Awaitable[None]]


class Subscription(Protocol):
    """A running consumer of one queue."""

    async def cancel(self, *, grace: float = 0.0) -> None:
        """Stop taking new messages; give the handlers in flight ``grace``
        seconds to finish, then stop them (their messages are delivered again)."""
        ...


@runtime_checkable
class Broker(Protocol):
    """A message broker. A handler that raises has its delivery dead-lettered."""

    async def publish(self, queue: str, body: bytes) -> None:
        """Return once the broker holds the message."""
        ...

    async def publish_many(self, queue: str, bodies: Iterable[bytes]) -> None:
        """Publish several messages; return once the broker holds them all."""
        ...

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        """Call ``handler`` for each message, at most ``prefetch`` at a time."""
        ...

    async def in_flight(self, queue: str) -> int:
        """Messages of ``queue`` queued or delivered but not yet settled."""
        ...

    async def queue_stats(self, queue: str) -> QueueStats:
        """What the broker tells of ``queue`` now (it is not created).

        :raises BrokerUnavailable: the broker cannot be reached.
        """
        ...

    async def dead_messages(self, queue: str, *, limit: int) -> list[DeadMessage]:
        """The first ``limit`` messages of ``queue``'s dead-letter queue,
        oldest first, all left in it, in the same order (a listing changes
        nothing).

        :raises TooManyDeadLetters: more than :data:`MAX_HELD_DEAD` dead letters.
        :raises BrokerUnavailable: the broker cannot be reached.
        """
        ...

    async def settle_dead(
        self, queue: str, ids: Collection[str] | None, *, requeue: bool, most: int | None = None
    ) -> list[DeadMessage]:
        """Take the messages ``ids`` (None: every one, or the first
        ``most``) out of ``queue``'s dead-letter queue: with ``requeue``,
        each body is published back to ``queue`` (confirmed, its message id
        the dead letter's) before its dead copy goes; without, it is
        dropped. Returns the messages taken, oldest first; the others keep
        their order.

        :raises NotFound: an id is not in the dead-letter queue (named; then
            nothing is taken).
        :raises TooManyDeadLetters: more than :data:`MAX_HELD_DEAD` dead letters.
        :raises PartlySettled: the broker was lost part way (what was taken,
            what was not).
        :raises BrokerUnavailable: the broker cannot be reached.
        """
        ...

    async def failed(self) -> BrokerError:
        """Wait until the broker can no longer do its work, and return why:
        its connection stopped for good (a configuration error, or a bug),
        or the server refused a queue it consumes. Never returns while the
        broker works, outages included (it reconnects)."""
        ...

    async def aclose(self) -> None:
        """Stop consuming and release connections."""
        ...
