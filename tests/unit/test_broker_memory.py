"""The in-process broker: at-least-once delivery, settling, prefetch, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import pytest

from jobtrack.broker import DeadLetter, Delivery, InMemoryBroker, Subscription
from jobtrack.errors import BrokerError

QUEUE = "jobs"
DEAD = "jobs.dead"
WAIT = 5.0  # seconds: a bound on every wait, never a pause

Action = Literal["ack", "requeue", "reject", "return", "raise"]


@pytest.fixture
async def broker() -> AsyncIterator[InMemoryBroker]:
    broker = InMemoryBroker()
    yield broker
    await broker.aclose()


@dataclass(frozen=True, slots=True)
class Held:
    """A delivery whose handler waits for the test to decide how it ends."""

    delivery: Delivery
    decision: asyncio.Future[Action]

    def settle(self, action: Action) -> None:
        self.decision.set_result(action)


class Puppet:
    """A handler the test drives one delivery at a time."""

    def __init__(self) -> None:
        self.held: asyncio.Queue[Held] = asyncio.Queue()
        self.finished: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
        self.cancelled: list[tuple[bytes, int]] = []

    async def __call__(self, delivery: Delivery) -> None:
        decision: asyncio.Future[Action] = asyncio.get_running_loop().create_future()
        self.held.put_nowait(Held(delivery, decision))
        try:
            action = await decision
        except asyncio.CancelledError:
            self.cancelled.append((delivery.body, delivery.delivery_count))
            raise
        if action == "ack":
            await delivery.ack()
        elif action == "requeue":
            await delivery.nack(requeue=True)
        elif action == "reject":
            await delivery.nack(requeue=False, reason="rejected by the test")
        elif action == "raise":
            raise ValueError(f"cannot handle {delivery.body!r}")
        self.finished.put_nowait((delivery.body, delivery.delivery_count))

    async def next(self) -> Held:
        """The next delivery handed to this handler."""
        async with asyncio.timeout(WAIT):
            return await self.held.get()

    async def next_finished(self) -> tuple[bytes, int]:
        """The next handler call to return, as (body, delivery count)."""
        async with asyncio.timeout(WAIT):
            return await self.finished.get()


class Recorder:
    """A handler that acks everything and signals once it has seen ``expected``."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen: list[tuple[bytes, int]] = []
        self.done = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.seen.append((delivery.body, delivery.delivery_count))
        await delivery.ack()
        if len(self.seen) == self.expected:
            self.done.set()

    async def wait(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.done.wait()


async def let_the_loop_run(turns: int = 20) -> None:
    """Give every ready task many chances to run (no time passes)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def consumer_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("consume:"))


async def test_publish_then_consume_delivers_each_message_once(broker: InMemoryBroker) -> None:
    bodies = [f"message {n}".encode() for n in range(5)]
    for body in bodies:
        await broker.publish(QUEUE, body)
    recorder = Recorder(expected=len(bodies))
    subscription = await broker.consume(QUEUE, recorder, prefetch=2)
    await recorder.wait()
    await let_the_loop_run()
    assert sorted(recorder.seen) == [(body, 1) for body in bodies]
    assert await broker.in_flight(QUEUE) == 0
    assert broker.dead_letters == {}
    await subscription.cancel()


async def test_ack_removes_the_message(broker: InMemoryBroker) -> None:
    puppet = Puppet()
    await broker.publish(QUEUE, b"one")
    subscription = await broker.consume(QUEUE, puppet, prefetch=1)
    held = await puppet.next()
    assert (held.delivery.body, held.delivery.delivery_count) == (b"one", 1)
    assert await broker.in_flight(QUEUE) == 1
    held.settle("ack")
    assert await puppet.next_finished() == (b"one", 1)
    assert await broker.in_flight(QUEUE) == 0
    await let_the_loop_run()
    assert puppet.held.qsize() == 0  # acked: never delivered again
    assert broker.dead_letters == {}
    await subscription.cancel()


async def test_nack_with_requeue_delivers_again_with_count_2(broker: InMemoryBroker) -> None:
    puppet = Puppet()
    await broker.publish(QUEUE, b"again")
    subscription = await broker.consume(QUEUE, puppet, prefetch=1)
    first = await puppet.next()
    first.settle("requeue")
    second = await puppet.next()
    assert (second.delivery.body, second.delivery.delivery_count) == (b"again", 2)
    assert await broker.in_flight(QUEUE) == 1
    second.settle("ack")
    assert [await puppet.next_finished(), await puppet.next_finished()] == [
        (b"again", 1),
        (b"again", 2),
    ]
    assert await broker.in_flight(QUEUE) == 0
    assert broker.dead_letters == {}
    await subscription.cancel()


async def test_nack_without_requeue_dead_letters_with_reason_and_count(
    broker: InMemoryBroker,
) -> None:
    puppet = Puppet()
    await broker.publish(QUEUE, b"first try")
    await broker.publish(QUEUE, b"second try")
    subscription = await broker.consume(QUEUE, puppet, prefetch=1)
    (await puppet.next()).settle("reject")
    (await puppet.next()).settle("requeue")
    (await puppet.next()).settle("reject")
    assert [await puppet.next_finished() for _ in range(3)] == [
        (b"first try", 1),
        (b"second try", 1),
        (b"second try", 2),
    ]
    assert broker.dead_letters == {
        DEAD: [
            DeadLetter(b"first try", "rejected by the test", 1),
            DeadLetter(b"second try", "rejected by the test", 2),
        ]
    }
    assert await broker.in_flight(QUEUE) == 0
    assert await broker.in_flight(DEAD) == 0  # dead letters are kept aside, not queued
    await subscription.cancel()


async def test_a_handler_that_raises_is_dead_lettered_and_consuming_goes_on(
    broker: InMemoryBroker,
) -> None:
    seen: list[bytes] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.body)
        if delivery.body == b"poison":
            raise ValueError("poison pill")
        await delivery.ack()
        if len(seen) == 3:
            done.set()

    for body in (b"poison", b"good 1", b"good 2"):
        await broker.publish(QUEUE, body)
    subscription = await broker.consume(QUEUE, handler, prefetch=1)
    async with asyncio.timeout(WAIT):
        await done.wait()
    assert seen == [b"poison", b"good 1", b"good 2"]
    [dead] = broker.dead_letters[DEAD]
    assert (dead.body, dead.delivery_count) == (b"poison", 1)
    assert dead.reason.startswith("handler error:")
    assert "poison pill" in dead.reason
    assert list(broker.dead_letters) == [DEAD]
    assert await broker.in_flight(QUEUE) == 0
    await subscription.cancel()


async def test_a_handler_error_with_a_huge_message_logs_and_keeps_a_few_lines(
    broker: InMemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    huge = "x" * 10_000_000

    raised = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        try:
            raise ValueError(huge)
        finally:
            raised.set()

    await broker.publish(QUEUE, b"body")
    with caplog.at_level(logging.DEBUG, logger="jobtrack.broker"):
        subscription = await broker.consume(QUEUE, handler, prefetch=1)
        async with asyncio.timeout(WAIT):
            await raised.wait()
        await subscription.cancel(grace=WAIT)  # the handler's failure settled first
    [dead] = broker.dead_letters[DEAD]
    assert dead.reason.startswith("handler error: ValueError('xxx")
    assert dead.reason.endswith("(9999729 more characters)")
    logged = sum(len(record.getMessage()) for record in caplog.records)
    assert len(caplog.text) < 10_000
    assert logged < 10_000
    assert "in handler" in caplog.text  # the traceback's frames are kept


async def test_a_handler_that_returns_without_settling_is_dead_lettered(
    broker: InMemoryBroker,
) -> None:
    puppet = Puppet()
    await broker.publish(QUEUE, b"forgotten")
    await broker.publish(QUEUE, b"after")
    subscription = await broker.consume(QUEUE, puppet, prefetch=1)
    (await puppet.next()).settle("return")
    after = await puppet.next()  # the consumer moved on
    assert after.delivery.body == b"after"
    assert broker.dead_letters == {
        DEAD: [DeadLetter(b"forgotten", "handler returned without settling", 1)]
    }
    assert await broker.in_flight(QUEUE) == 1
    after.settle("ack")
    assert [await puppet.next_finished() for _ in range(2)] == [(b"forgotten", 1), (b"after", 1)]
    assert await broker.in_flight(QUEUE) == 0
    assert len(broker.dead_letters[DEAD]) == 1
    await subscription.cancel()


async def settle(delivery: Delivery, action: Action) -> None:
    if action == "ack":
        await delivery.ack()
    elif action == "requeue":
        await delivery.nack(requeue=True)
    else:
        await delivery.nack(requeue=False, reason="rejected by the test")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ack", "ack"),
        ("ack", "requeue"),
        ("ack", "reject"),
        ("reject", "ack"),
        ("reject", "requeue"),
        ("requeue", "ack"),
        ("requeue", "requeue"),
    ],
)
async def test_settling_twice_raises_and_changes_nothing(
    broker: InMemoryBroker, first: Action, second: Action
) -> None:
    puppet = Puppet()
    await broker.publish(QUEUE, b"once")
    subscription = await broker.consume(QUEUE, puppet, prefetch=1)
    held = await puppet.next()
    held.settle(first)
    assert await puppet.next_finished() == (b"once", 1)
    expected_in_flight = 0
    if first == "requeue":  # redelivered, and held unsettled by the handler
        redelivery = await puppet.next()
        assert redelivery.delivery.delivery_count == 2
        expected_in_flight = 1
    assert await broker.in_flight(QUEUE) == expected_in_flight
    dead_before = {queue: list(letters) for queue, letters in broker.dead_letters.items()}
    with pytest.raises(BrokerError, match="already acked or nacked"):
        await settle(held.delivery, second)
    # Nothing counted twice, requeued or dead-lettered by the refused settle.
    assert await broker.in_flight(QUEUE) == expected_in_flight
    assert broker.dead_letters == dead_before
    await let_the_loop_run()
    assert puppet.held.qsize() == 0
    await subscription.cancel()


@pytest.mark.parametrize("prefetch", [1, 3, 5])
async def test_prefetch_bounds_the_handlers_running_at_once(
    broker: InMemoryBroker, prefetch: int
) -> None:
    total = prefetch + 4
    gate = asyncio.Event()
    full = asyncio.Event()
    done = asyncio.Event()
    running = peak = started = finished = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal running, peak, started, finished
        started += 1
        running += 1
        peak = max(peak, running)
        if running == prefetch:
            full.set()
        try:
            await gate.wait()
        finally:
            running -= 1
        await delivery.ack()
        finished += 1
        if finished == total:
            done.set()

    for n in range(total):
        await broker.publish(QUEUE, f"{n}".encode())
    subscription = await broker.consume(QUEUE, handler, prefetch=prefetch)
    async with asyncio.timeout(WAIT):
        await full.wait()
    await let_the_loop_run()
    assert (started, running) == (prefetch, prefetch)
    assert await broker.in_flight(QUEUE) == total
    gate.set()
    async with asyncio.timeout(WAIT):
        await done.wait()
    assert peak == prefetch
    assert (started, finished, running) == (total, total, 0)
    assert await broker.in_flight(QUEUE) == 0
    await subscription.cancel()


async def test_in_flight_counts_queued_and_unsettled_messages(broker: InMemoryBroker) -> None:
    puppet = Puppet()
    assert await broker.in_flight(QUEUE) == 0
    for count, body in enumerate([b"a", b"b", b"c"], start=1):
        await broker.publish(QUEUE, body)
        assert await broker.in_flight(QUEUE) == count
    subscription = await broker.consume(QUEUE, puppet, prefetch=2)
    a, b = await puppet.next(), await puppet.next()
    assert [a.delivery.body, b.delivery.body] == [b"a", b"b"]
    assert await broker.in_flight(QUEUE) == 3  # c queued, a and b delivered

    a.settle("ack")
    assert await puppet.next_finished() == (b"a", 1)
    c = await puppet.next()
    assert c.delivery.body == b"c"
    assert await broker.in_flight(QUEUE) == 2  # b and c delivered

    b.settle("requeue")
    assert await puppet.next_finished() == (b"b", 1)
    b_again = await puppet.next()
    assert (b_again.delivery.body, b_again.delivery.delivery_count) == (b"b", 2)
    assert await broker.in_flight(QUEUE) == 2  # c and b (again) delivered

    c.settle("reject")
    assert await puppet.next_finished() == (b"c", 1)
    assert await broker.in_flight(QUEUE) == 1  # b (again) delivered; c is a dead letter

    b_again.settle("ack")
    assert await puppet.next_finished() == (b"b", 2)
    assert await broker.in_flight(QUEUE) == 0
    assert await broker.in_flight("another queue") == 0
    assert broker.dead_letters == {DEAD: [DeadLetter(b"c", "rejected by the test", 1)]}
    await subscription.cancel()


async def test_cancel_requeues_the_message_a_handler_was_blocked_on(
    broker: InMemoryBroker,
) -> None:
    puppet = Puppet()
    await broker.publish(QUEUE, b"blocked")
    subscription = await broker.consume(QUEUE, puppet, prefetch=2)
    held = await puppet.next()
    assert await broker.in_flight(QUEUE) == 1
    await subscription.cancel()
    assert puppet.cancelled == [(b"blocked", 1)]
    assert held.decision.cancelled()
    assert await broker.in_flight(QUEUE) == 1  # back in the queue: neither lost nor dead
    assert broker.dead_letters == {}

    await broker.publish(QUEUE, b"later")
    await let_the_loop_run()
    assert puppet.held.qsize() == 0  # the cancelled subscription takes nothing more
    assert await broker.in_flight(QUEUE) == 2

    recorder = Recorder(expected=2)
    replacement = await broker.consume(QUEUE, recorder, prefetch=1)
    await recorder.wait()
    assert recorder.seen == [(b"blocked", 2), (b"later", 1)]
    assert await broker.in_flight(QUEUE) == 0
    await replacement.cancel()


async def test_cancel_with_grace_lets_a_handler_finish_and_takes_nothing_new(
    broker: InMemoryBroker,
) -> None:
    finished: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        await asyncio.sleep(0.05 if delivery.body == b"quick" else 60)
        finished.append(delivery.body)
        await delivery.ack()

    await broker.publish_many(QUEUE, [b"quick", b"stuck"])
    subscription = await broker.consume(QUEUE, handler, prefetch=2)
    await let_the_loop_run()
    await broker.publish(QUEUE, b"queued after")
    await subscription.cancel(grace=1.0)
    assert finished == [b"quick"]
    # the stuck one was handed back; the one queued after was never taken
    assert await broker.in_flight(QUEUE) == 2
    assert broker.dead_letters == {}


@pytest.mark.parametrize("prefetch", [0, -1])
async def test_prefetch_below_1_is_refused(broker: InMemoryBroker, prefetch: int) -> None:
    await broker.publish(QUEUE, b"waiting")
    with pytest.raises(BrokerError, match=f"^prefetch must be at least 1, not {prefetch}$"):
        await broker.consume(QUEUE, Recorder(expected=1), prefetch=prefetch)
    await let_the_loop_run()
    assert consumer_tasks() == []
    assert await broker.in_flight(QUEUE) == 1


async def test_aclose_stops_every_consumer(broker: InMemoryBroker) -> None:
    blocked = Puppet()
    idle = Recorder(expected=1)
    await broker.publish("a", b"held")
    subscriptions: list[Subscription] = [
        await broker.consume("a", blocked, prefetch=2),
        await broker.consume("b", idle, prefetch=3),
    ]
    await blocked.next()
    assert len(consumer_tasks()) == 5
    await broker.aclose()
    assert consumer_tasks() == []
    assert blocked.cancelled == [(b"held", 1)]
    assert await broker.in_flight("a") == 1

    await broker.publish("a", b"after")
    await broker.publish("b", b"after")
    await let_the_loop_run()
    assert blocked.held.qsize() == 0
    assert idle.seen == []
    assert (await broker.in_flight("a"), await broker.in_flight("b")) == (2, 1)
    for subscription in subscriptions:
        await subscription.cancel()  # already stopped: cancelling again is harmless
    assert consumer_tasks() == []
