"""The in-process broker where it differs from RabbitMQ: closing it stops
every consumer but leaves its queues usable. What both brokers do is the
contract suite's (tests/contract/test_broker_contract.py)."""

from __future__ import annotations

import asyncio

from jobtrack.broker import Delivery, InMemoryBroker, Subscription


async def let_the_loop_run(turns: int = 20) -> None:
    """Give every ready task many chances to run (no time passes)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def consumer_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("consume:"))


async def test_aclose_stops_every_consumer_and_keeps_the_queues() -> None:
    broker = InMemoryBroker()
    held: list[tuple[bytes, int]] = []
    cancelled: list[bytes] = []
    seen: list[bytes] = []

    async def blocked(delivery: Delivery) -> None:
        held.append((delivery.body, delivery.delivery_count))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(delivery.body)
            raise

    async def idle(delivery: Delivery) -> None:
        seen.append(delivery.body)
        await delivery.ack()

    await broker.publish("a", b"held")
    subscriptions: list[Subscription] = [
        await broker.consume("a", blocked, prefetch=2),
        await broker.consume("b", idle, prefetch=3),
    ]
    await let_the_loop_run()
    assert held == [(b"held", 1)]
    assert len(consumer_tasks()) == 5
    await broker.aclose()
    assert consumer_tasks() == []
    assert cancelled == [b"held"]
    assert await broker.in_flight("a") == 1  # handed back

    await broker.publish("a", b"after")
    await broker.publish("b", b"after")
    await let_the_loop_run()
    assert held == [(b"held", 1)]
    assert seen == []
    assert (await broker.in_flight("a"), await broker.in_flight("b")) == (2, 1)
    for subscription in subscriptions:
        await subscription.cancel()  # already stopped: cancelling again is harmless
    assert consumer_tasks() == []


async def test_a_dropped_connection_leaves_no_consumer_task_behind() -> None:
    broker = InMemoryBroker()
    release = asyncio.Event()
    seen: list[tuple[bytes, int]] = []

    async def handler(delivery: Delivery) -> None:
        seen.append((delivery.body, delivery.delivery_count))
        await release.wait()
        await delivery.ack()

    await broker.publish("a", b"one")
    subscription = await broker.consume("a", handler, prefetch=2)
    await let_the_loop_run()
    await broker.drop_connection()
    await let_the_loop_run()
    # The held handler runs on; two new tasks take messages on the new channel.
    assert seen == [(b"one", 1), (b"one", 2)]
    assert len(consumer_tasks()) == 3
    release.set()
    await let_the_loop_run()
    assert len(consumer_tasks()) == 2  # the old channel's task ended with its handler
    assert await broker.in_flight("a") == 0
    await subscription.cancel()
    assert consumer_tasks() == []
    await broker.aclose()
