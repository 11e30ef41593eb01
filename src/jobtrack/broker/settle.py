"""The settle policy of every broker, written once.

A delivery is settled exactly once: acked, nacked (requeued or
dead-lettered) or retried; a second settle raises
:class:`~jobtrack.errors.BrokerError` and changes nothing. What a handler
leaves unsettled, :func:`run_handler` settles:

- the handler **raises**: the message is dead-lettered, its reason the
  exception's clipped ``repr`` (``handler error: …``), and the traceback
  is logged;
- the handler is **cancelled** (its subscription was cancelled, past any
  grace): the message is requeued, to be delivered again;
- the handler **returns** without settling: the message is dead-lettered
  with the reason :data:`UNSETTLED`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Generic, Protocol, TypeVar

from jobtrack.broker.base import Delivery, Handler, clip, handler_failure
from jobtrack.errors import BrokerError

__all__ = ["UNSETTLED", "SettleOnce", "Settleable", "log_dead_letter", "run_handler"]

logger = logging.getLogger(__name__)

UNSETTLED = "handler returned without settling"
"""The dead-letter reason of a message whose handler returned without settling it."""


class Settleable(Delivery, Protocol):
    """A delivery that says whether it has been settled."""

    @property
    def settled(self) -> bool:
        """Whether the delivery was acked, nacked or retried."""
        ...


class _Message(Protocol):
    @property
    def body(self) -> bytes: ...


MessageT = TypeVar("MessageT", bound=_Message)


class SettleOnce(Generic[MessageT]):
    """What every broker's delivery has: its queue, its message, and the
    rule that it is settled once. A subclass's ``ack``, ``nack`` and
    ``retry`` call :meth:`_settle` before anything else."""

    __slots__ = ("_message", "_queue", "_settled")

    def __init__(self, queue: str, message: MessageT) -> None:
        self._queue = queue
        self._message = message
        self._settled = False

    @property
    def body(self) -> bytes:
        """The message as published."""
        return self._message.body

    @property
    def settled(self) -> bool:
        """Whether the delivery was acked, nacked or retried."""
        return self._settled

    def _settle(self) -> None:
        """Mark the delivery settled.

        :raises BrokerError: it was settled already.
        """
        if self._settled:
            raise BrokerError("delivery already acked or nacked")
        self._settled = True


async def run_handler(handler: Handler, delivery: Settleable, queue: str) -> None:
    """Call ``handler`` on ``delivery`` (from ``queue``), then settle the
    delivery if the handler did not: dead-letter it when the handler raised
    or returned, requeue it when the handler was cancelled.

    Never raises the handler's exception (it is logged with its traceback);
    :class:`asyncio.CancelledError` is raised again once the message is
    requeued.
    """
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
            await delivery.nack(requeue=False, reason=UNSETTLED)


def log_dead_letter(queue: str, reason: str) -> None:
    """Log that a message of ``queue`` was dead-lettered, and why (clipped)."""
    logger.warning(
        "dead-lettered a message from %s: %s",
        queue,
        clip(reason, 1000),
        extra={"action": "dead_letter", "queue": queue},
    )
