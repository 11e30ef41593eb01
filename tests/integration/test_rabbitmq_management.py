"""A queue's numbers from RabbitMQ's management API: on a private node with
the management plugin (``tests/services/rabbitmq_nodes.py``; the machine's
own node has none), ``queue_stats`` tells the messages held unacked, which
AMQP does not; without the API, or when it does not answer, AMQP's numbers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from jobtrack.broker import Delivery, open_broker
from jobtrack.broker.base import QueueStats
from jobtrack.broker.rabbitmq import RabbitMQBroker
from jobtrack.errors import ConfigurationError
from tests.services.rabbitmq_nodes import RabbitCluster, cluster_unavailable

pytestmark = pytest.mark.timeout(300)

PORT, MANAGEMENT_PORT = 5761, 15761
QUEUE = "jobtrack.imports.rows"


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitCluster]:
    """One private node with the management plugin, for this module."""
    why = cluster_unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"cannot start a private RabbitMQ node: {why}")
        pytest.skip(f"cannot start a private RabbitMQ node: {why}")
    with RabbitCluster(("jtmgmt",), PORT, management_port=MANAGEMENT_PORT) as started:
        yield started


async def until_stats(broker: RabbitMQBroker, want: QueueStats) -> QueueStats:
    """The queue's numbers once they are ``want`` (the API samples them)."""
    async with asyncio.timeout(30):
        while (stats := await broker.queue_stats(want.queue)) != want:  # noqa: ASYNC110
            await asyncio.sleep(0.2)  # (polling the server's sampled numbers)
    return stats


async def test_the_management_api_tells_the_messages_held_unacked(node: RabbitCluster) -> None:
    url = node.url("jtmgmt")
    management = f"http://guest:guest@127.0.0.1:{MANAGEMENT_PORT}"
    broker = open_broker(url, management_url=management)
    plain = RabbitMQBroker(url)
    assert isinstance(broker, RabbitMQBroker)
    held: asyncio.Queue[Delivery] = asyncio.Queue()
    release = asyncio.Event()

    async def hold(delivery: Delivery) -> None:
        held.put_nowait(delivery)
        await release.wait()
        await delivery.ack()

    try:
        assert await broker.queue_stats("jobtrack.never") == QueueStats("jobtrack.never", 0, 0)
        await broker.publish_many(QUEUE, [b"a", b"b", b"c"])
        subscription = await broker.consume(QUEUE, hold, prefetch=1)
        async with asyncio.timeout(20):
            await held.get()
        await until_stats(broker, QueueStats(QUEUE, 2, 1, 1))  # quorum: no head timestamp
        # AMQP alone: the same ready and consumers, nothing of what is held.
        assert await plain.queue_stats(QUEUE) == QueueStats(QUEUE, 2, 1, None, None)
        await subscription.cancel()  # the held message goes back
        await until_stats(broker, QueueStats(QUEUE, 3, 0, 0))
        release.set()
    finally:
        await broker.aclose()
        await plain.aclose()


async def test_a_management_api_that_does_not_answer_leaves_amqps_numbers(
    node: RabbitCluster,
) -> None:
    broker = RabbitMQBroker(node.url("jtmgmt"), management_url="http://127.0.0.1:1")
    try:
        await broker.publish("jobtrack.other.rows", b"x")
        assert await broker.queue_stats("jobtrack.other.rows") == QueueStats(
            "jobtrack.other.rows", 1, 0, None, None
        )
    finally:
        await broker.aclose()


@pytest.mark.parametrize("url", ["ftp://host", "http://", "http://host:99999", "localhost:15672"])
def test_a_management_url_that_cannot_work_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="bad RabbitMQ management URL"):
        RabbitMQBroker("amqp://guest:guest@127.0.0.1/", management_url=url)
