"""The broker port and its backends: ``memory://`` (in-process) and
``amqp://`` (RabbitMQ)."""

from __future__ import annotations

from jobtrack.broker.base import Broker, Delivery, Handler, Subscription, dead_letter_queue
from jobtrack.broker.memory import DeadLetter, InMemoryBroker
from jobtrack.errors import InvalidRequest, masked_url

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


def open_broker(url: str, *, management_url: str | None = None) -> Broker:
    """Open the broker a URL names (connecting lazily, on first use):
    ``memory://``, or ``amqp://…``, one URL or a cluster's nodes separated
    by commas; ``management_url``: RabbitMQ's management API, for the
    numbers of a queue AMQP does not tell (ignored for ``memory://``).

    :raises InvalidRequest: another scheme (the URL shown with its password
        masked).
    :raises ConfigurationError: an ``amqp://`` setting that does not parse.
    """
    if url == "memory://":
        return InMemoryBroker()
    if url.lstrip().lower().startswith(("amqp://", "amqps://")):
        from jobtrack.broker.rabbitmq import RabbitMQBroker  # noqa: PLC0415 (aio-pika on demand)

        return RabbitMQBroker(url, management_url=management_url)
    raise InvalidRequest(
        f"unsupported broker URL {masked_url(url)!r}: use memory:// or amqp://…"
        " (a cluster's nodes: amqp:// URLs separated by commas)"
    )
