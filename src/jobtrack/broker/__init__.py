"""The broker port and its backends: ``memory://`` (in-process) and
``amqp://`` (RabbitMQ)."""

from __future__ import annotations

from jobtrack.broker.base import Broker, Delivery, Handler, Subscription, dead_letter_queue
from jobtrack.broker.memory import DeadLetter, InMemoryBroker
from jobtrack.errors import InvalidRequest

__all__ = [
    "Broker",
    "DeadLetter",
    "Delivery",
    "Handler",
    "InMemoryBroker",
    "Subscription",
    "dead_letter_queue",
    "open_broker",
]


def open_broker(url: str) -> Broker:
    """Open the broker a URL names (connecting lazily, on first use)."""
    if url == "memory://":
        return InMemoryBroker()
    if url.startswith(("amqp://", "amqps://")):
        from jobtrack.broker.rabbitmq import RabbitMQBroker  # noqa: PLC0415 (aio-pika on demand)

        return RabbitMQBroker(url)
    raise InvalidRequest(f"unsupported broker URL {url!r}: use memory:// or amqp://…")
