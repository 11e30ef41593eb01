"""The broker contract: the same bodies against the in-process broker and
RabbitMQ (a virtual host for this module, a queue for each test).

What differs between the two is a field of the fixture
(:class:`~tests.contract.conftest.BrokerUnderTest`), never a branch here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import pytest

from jobtrack.broker import DeadLetter, Delivery, Subscription
from jobtrack.errors import BrokerError
from tests.contract.conftest import BrokerUnderTest

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0  # seconds: a bound on every wait (RabbitMQ reconnects within it), never a pause

Action = Literal["ack", "requeue", "reject", "retry", "return", "raise"]
SETTLES: list[Action] = ["ack", "requeue", "reject", "retry"]
REJECTED = "rejected by the test"
RETRIED = b" (retried)"


@dataclass(frozen=True, slots=True)
class Held:
    """A delivery whose handler waits for the test to decide how it ends."""

    delivery: Delivery
    decision: asyncio.Future[Action]

    def settle(self, action: Action) -> None:
        self.decision.set_result(action)


async def settle(delivery: Delivery, action: Action) -> None:
    """Settle ``delivery`` as ``action`` says (``return`` and ``raise`` leave
    it; ``retry`` puts its body with :data:`RETRIED` added at the back)."""
    if action == "ack":
        await delivery.ack()
    elif action == "requeue":
        await delivery.nack(requeue=True)
    elif action == "reject":
        await delivery.nack(requeue=False, reason=REJECTED)
    elif action == "retry":
        await delivery.retry(delivery.body + RETRIED)


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
        await settle(delivery, action)
        if action == "raise":
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


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check()`` is true; TimeoutError after ``WAIT`` seconds."""
    async with asyncio.timeout(WAIT):
        while not await check():  # noqa: ASYNC110 (polling the broker, not an event of ours)
            await asyncio.sleep(0.05)


def in_flight_is(b: BrokerUnderTest, count: int, queue: str = "") -> Callable[[], Awaitable[bool]]:
    """A check that ``queue`` (the test's own by default) has ``count`` messages in flight."""

    async def check() -> bool:
        return await b.broker.in_flight(queue or b.queue) == count

    return check


async def puppet_on(
    b: BrokerUnderTest, bodies: list[bytes], *, prefetch: int
) -> tuple[Puppet, Subscription]:
    """``bodies`` published to the test's queue, and a :class:`Puppet` consuming it."""
    puppet = Puppet()
    await b.broker.publish_many(b.queue, bodies)
    return puppet, await b.broker.consume(b.queue, puppet, prefetch=prefetch)


async def consume_the_rest(b: BrokerUnderTest, count: int) -> list[tuple[bytes, int]]:
    """The (body, delivery count) of each of the ``count`` messages left in
    the test's queue, as a new consumer is handed and acks them; after
    which nothing is left in flight, nor in the dead letters."""
    recorder = Recorder(expected=count)
    replacement = await b.broker.consume(b.queue, recorder, prefetch=1)
    await recorder.wait()
    await until(in_flight_is(b, 0))
    await replacement.cancel()
    assert await b.take_dead_letters() == []
    return recorder.seen


async def test_each_message_published_is_delivered_once(under_test: BrokerUnderTest) -> None:
    b = under_test
    bodies = [f"message {n}".encode() for n in range(5)]
    await b.broker.publish_many(b.queue, bodies)
    assert await b.broker.in_flight(b.queue) == 5  # held by the broker once publish returned
    recorder = Recorder(expected=len(bodies))
    subscription = await b.broker.consume(b.queue, recorder, prefetch=2)
    await recorder.wait()
    await asyncio.sleep(b.quiet)
    assert sorted(recorder.seen) == [(body, 1) for body in bodies]
    await until(in_flight_is(b, 0))
    await subscription.cancel()
    assert await b.take_dead_letters() == []


async def test_ack_settles_the_message_for_good(under_test: BrokerUnderTest) -> None:
    b = under_test
    puppet, subscription = await puppet_on(b, [b"one"], prefetch=1)
    held = await puppet.next()
    assert (held.delivery.body, held.delivery.delivery_count) == (b"one", 1)
    assert await b.broker.in_flight(b.queue) == 1
    held.settle("ack")
    assert await puppet.next_finished() == (b"one", 1)
    assert await b.broker.in_flight(b.queue) == 0
    await subscription.cancel()
    await asyncio.sleep(b.quiet)
    assert puppet.held.qsize() == 0  # acked: never delivered again
    assert await b.broker.in_flight(b.queue) == 0
    assert await b.take_dead_letters() == []


async def test_nack_with_requeue_delivers_again_with_the_count_raised(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    puppet, subscription = await puppet_on(b, [b"again"], prefetch=1)
    (await puppet.next()).settle("requeue")
    (await puppet.next()).settle("requeue")
    third = await puppet.next()
    assert (third.delivery.body, third.delivery.delivery_count) == (b"again", 3)
    assert await b.broker.in_flight(b.queue) == 1
    third.settle("ack")
    assert [await puppet.next_finished() for _ in range(3)] == [
        (b"again", 1),
        (b"again", 2),
        (b"again", 3),
    ]
    assert await b.broker.in_flight(b.queue) == 0
    await subscription.cancel()
    assert await b.take_dead_letters() == []


async def test_nack_without_requeue_dead_letters_with_the_reason_and_count(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    puppet, subscription = await puppet_on(b, [b"first try", b"second try"], prefetch=1)
    (await puppet.next()).settle("reject")
    (await puppet.next()).settle("requeue")
    (await puppet.next()).settle("reject")
    assert [await puppet.next_finished() for _ in range(3)] == [
        (b"first try", 1),
        (b"second try", 1),
        (b"second try", 2),
    ]
    assert await b.broker.in_flight(b.queue) == 0
    await subscription.cancel()
    assert await b.take_dead_letters() == [
        DeadLetter(b"first try", REJECTED, 1),
        DeadLetter(b"second try", REJECTED, 2),
    ]


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("raise", "handler error: ValueError(\"cannot handle b'first'\")"),
        ("return", "handler returned without settling"),
    ],
)
async def test_what_a_handler_leaves_unsettled_is_dead_lettered_and_consuming_goes_on(
    under_test: BrokerUnderTest, action: Action, reason: str
) -> None:
    b = under_test
    puppet, subscription = await puppet_on(b, [b"first", b"after"], prefetch=1)
    (await puppet.next()).settle(action)
    after = await puppet.next()  # the consumer moved on
    assert (after.delivery.body, after.delivery.delivery_count) == (b"after", 1)
    assert await b.broker.in_flight(b.queue) == 1  # `first` settled by the broker
    after.settle("ack")
    await until(in_flight_is(b, 0))
    await subscription.cancel()
    assert await b.take_dead_letters() == [DeadLetter(b"first", reason, 1)]


async def test_a_huge_handler_error_is_clipped_in_the_dead_letter_and_the_log(
    under_test: BrokerUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    b = under_test
    raised = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        try:
            raise ValueError("x" * 10_000_000)
        finally:
            raised.set()

    await b.broker.publish(b.queue, b"body")
    with caplog.at_level(logging.DEBUG, logger="jobtrack.broker"):
        subscription = await b.broker.consume(b.queue, handler, prefetch=1)
        async with asyncio.timeout(WAIT):
            await raised.wait()
        await until(in_flight_is(b, 0))  # dead-lettered
        await subscription.cancel()
    [dead] = await b.take_dead_letters()
    assert (dead.body, dead.delivery_count) == (b"body", 1)
    assert dead.reason == f"handler error: ValueError('{'x' * 273}… (9999729 more characters)"
    assert len(caplog.text) < 10_000
    assert sum(len(record.getMessage()) for record in caplog.records) < 10_000
    assert "in handler" in caplog.text  # the traceback's frames are kept


AFTER_FIRST_SETTLE: dict[Action, tuple[list[tuple[bytes, int]], list[DeadLetter]]] = {
    "ack": ([], []),
    "requeue": ([(b"once", 2)], []),
    "reject": ([], [DeadLetter(b"once", REJECTED, 1)]),
    "retry": ([(b"once" + RETRIED, 1)], []),
}
"""What each first settle leaves: (the deliveries that follow, the dead letters)."""


@pytest.mark.parametrize("first", SETTLES)
async def test_settling_twice_raises_and_changes_nothing(
    under_test: BrokerUnderTest, first: Action
) -> None:
    # Every pair (first, second) of SETTLES: after ``first``, each ``second``
    # is refused in turn, and none of them changed anything (one wait for
    # all four keeps the suite fast; what any of them changed would show).
    b = under_test
    redelivered, dead = AFTER_FIRST_SETTLE[first]
    puppet, subscription = await puppet_on(b, [b"once"], prefetch=1)
    held = await puppet.next()
    held.settle(first)
    assert await puppet.next_finished() == (b"once", 1)
    again = [await puppet.next() for _ in redelivered]  # held unsettled by the handler
    assert [(h.delivery.body, h.delivery.delivery_count) for h in again] == redelivered
    assert await b.broker.in_flight(b.queue) == len(redelivered)
    for second in SETTLES:
        with pytest.raises(BrokerError, match=r"^delivery already acked or nacked$"):
            await settle(held.delivery, second)
    await asyncio.sleep(b.quiet)
    # Nothing requeued, dead-lettered, retried or counted again by the refused settles.
    assert puppet.held.qsize() == 0
    assert await b.broker.in_flight(b.queue) == len(redelivered)
    assert await b.take_dead_letters() == dead
    await subscription.cancel()


async def test_retry_puts_the_new_body_at_the_back_of_the_queue(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    seen: list[tuple[bytes, int]] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        seen.append((delivery.body, delivery.delivery_count))
        if delivery.body == b"attempt 1":
            await delivery.retry(b"attempt 2")
            return
        await delivery.ack()
        if len(seen) == 3:
            done.set()

    await b.broker.publish_many(b.queue, [b"attempt 1", b"other"])
    subscription = await b.broker.consume(b.queue, handler, prefetch=1)
    async with asyncio.timeout(WAIT):
        await done.wait()
    await until(in_flight_is(b, 0))
    await subscription.cancel()
    assert seen == [(b"attempt 1", 1), (b"other", 1), (b"attempt 2", 1)]
    assert await b.take_dead_letters() == []


@pytest.mark.parametrize("prefetch", [1, 3])
async def test_prefetch_bounds_the_messages_held_at_once(
    under_test: BrokerUnderTest, prefetch: int
) -> None:
    b = under_test
    total = prefetch + 4
    gate, full, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
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

    await b.broker.publish_many(b.queue, [b"%d" % n for n in range(total)])
    subscription = await b.broker.consume(b.queue, handler, prefetch=prefetch)
    async with asyncio.timeout(WAIT):
        await full.wait()
    await asyncio.sleep(b.quiet)  # more would have come by now
    assert (started, running) == (prefetch, prefetch)
    assert await b.broker.in_flight(b.queue) == total
    gate.set()
    async with asyncio.timeout(WAIT):
        await done.wait()
    assert (peak, started, finished, running) == (prefetch, total, total, 0)
    await until(in_flight_is(b, 0))
    await subscription.cancel()


async def test_in_flight_counts_queued_and_unsettled_messages(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    puppet = Puppet()
    assert await b.broker.in_flight(b.queue) == 0
    for count, body in enumerate([b"a", b"b", b"c"], start=1):
        await b.broker.publish(b.queue, body)
        assert await b.broker.in_flight(b.queue) == count
    subscription = await b.broker.consume(b.queue, puppet, prefetch=2)
    a, b_ = await puppet.next(), await puppet.next()
    assert [a.delivery.body, b_.delivery.body] == [b"a", b"b"]
    assert await b.broker.in_flight(b.queue) == 3  # c queued, a and b delivered

    a.settle("ack")
    assert await puppet.next_finished() == (b"a", 1)
    c = await puppet.next()
    assert c.delivery.body == b"c"
    assert await b.broker.in_flight(b.queue) == 2  # b and c delivered

    b_.settle("requeue")
    assert await puppet.next_finished() == (b"b", 1)
    b_again = await puppet.next()
    assert (b_again.delivery.body, b_again.delivery.delivery_count) == (b"b", 2)
    assert await b.broker.in_flight(b.queue) == 2  # c and b (again) delivered

    c.settle("reject")
    assert await puppet.next_finished() == (b"c", 1)
    assert await b.broker.in_flight(b.queue) == 1  # b (again) delivered; c is a dead letter

    b_again.settle("ack")
    assert await puppet.next_finished() == (b"b", 2)
    assert await b.broker.in_flight(b.queue) == 0
    assert await b.broker.in_flight(f"{b.queue}-other") == 0
    await subscription.cancel()
    assert await b.take_dead_letters() == [DeadLetter(b"c", REJECTED, 1)]


async def test_cancel_hands_back_every_held_message_which_is_delivered_again(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    bodies = [b"blocked 0", b"blocked 1", b"blocked 2"]
    puppet, subscription = await puppet_on(b, bodies, prefetch=3)
    held = [await puppet.next() for _ in bodies]
    assert sorted(h.delivery.body for h in held) == bodies
    assert await b.broker.in_flight(b.queue) == 3
    await subscription.cancel()
    assert sorted(puppet.cancelled) == [(body, 1) for body in bodies]
    assert [h.decision.cancelled() for h in held] == [True, True, True]
    await until(in_flight_is(b, 3))  # all back in the queue: neither lost nor dead

    await b.broker.publish(b.queue, b"later")
    await asyncio.sleep(b.quiet)
    assert puppet.held.qsize() == 0  # the cancelled subscription takes nothing more
    assert await b.broker.in_flight(b.queue) == 4

    rest = await consume_the_rest(b, 4)
    assert sorted(rest) == [*((body, 2) for body in bodies), (b"later", 1)]


async def test_cancel_with_grace_lets_a_handler_finish_and_hands_back_the_rest(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    finished: list[bytes] = []
    started = asyncio.Queue[bytes]()

    async def handler(delivery: Delivery) -> None:
        started.put_nowait(delivery.body)
        await asyncio.sleep(0.3 if delivery.body == b"quick" else 60)
        finished.append(delivery.body)
        await delivery.ack()

    await b.broker.publish_many(b.queue, [b"quick", b"stuck", b"queued"])
    subscription = await b.broker.consume(b.queue, handler, prefetch=2)
    async with asyncio.timeout(WAIT):
        assert sorted([await started.get(), await started.get()]) == [b"quick", b"stuck"]
    await subscription.cancel(grace=1.5)
    assert finished == [b"quick"]
    assert started.qsize() == 0  # nothing new taken during the grace
    await until(in_flight_is(b, 2))  # the stuck one handed back; the queued one never taken

    assert sorted(await consume_the_rest(b, 2)) == [(b"queued", 1), (b"stuck", 2)]


@pytest.mark.parametrize(
    ("action", "in_flight", "dead", "rest"),
    [
        ("ack", 1, [], [(b"first", 3)]),
        ("requeue", 1, [], [(b"first", 3)]),
        # A dead-letter copy, or a retry, is a publish, which goes out on the
        # new connection: the message is dead-lettered (or retried) AND
        # delivered again.
        ("reject", 1, [DeadLetter(b"first", REJECTED, 1)], [(b"first", 3)]),
        ("retry", 2, [], [(b"first", 3), (b"first" + RETRIED, 1)]),
        ("cancel", 1, [], [(b"first", 3)]),  # the subscription, both handlers running
    ],
)
async def test_settling_after_the_connection_was_lost_changes_nothing(
    under_test: BrokerUnderTest,
    action: Action | Literal["cancel"],
    in_flight: int,
    dead: list[DeadLetter],
    rest: list[tuple[bytes, int]],
) -> None:
    b = under_test
    puppet, subscription = await puppet_on(b, [b"first"], prefetch=1)
    old = await puppet.next()
    await b.lose_connection()
    new = await puppet.next()  # delivered again, on the connection made again
    assert (old.delivery.delivery_count, new.delivery.body, new.delivery.delivery_count) == (
        1,
        b"first",
        2,
    )
    # `old` is back in the queue and delivered as `new`: counted once, by one consumer.
    assert await b.broker.in_flight(b.queue) == 1
    assert await b.consumers() == 1

    if action == "cancel":
        await subscription.cancel()  # `old`'s handler stopped too; `new` handed back
        assert sorted(puppet.cancelled) == [(b"first", 1), (b"first", 2)]
    else:
        old.settle(action)  # nothing to settle any more, and never `new`
        assert await puppet.next_finished() == (b"first", 1)
    await until(in_flight_is(b, in_flight))
    await asyncio.sleep(b.quiet)  # anything more that was coming has come
    assert puppet.held.qsize() == 0  # nothing delivered an extra time
    assert await b.broker.in_flight(b.queue) == in_flight
    with pytest.raises(BrokerError, match=r"^delivery already acked or nacked$"):
        await old.delivery.ack()
    assert await b.take_dead_letters() == dead

    await subscription.cancel()  # `new` handed back (cancelling again changes nothing)
    assert sorted(puppet.cancelled) == [
        *([(b"first", 1)] if action == "cancel" else []),
        (b"first", 2),
    ]
    await until(in_flight_is(b, len(rest)))
    assert sorted(await consume_the_rest(b, len(rest))) == rest


@pytest.mark.parametrize("prefetch", [0, -1])
async def test_prefetch_below_1_is_refused(under_test: BrokerUnderTest, prefetch: int) -> None:
    b = under_test
    puppet = Puppet()
    await b.broker.publish(b.queue, b"waiting")
    with pytest.raises(BrokerError, match=f"^prefetch must be at least 1, not {prefetch}$"):
        await b.broker.consume(b.queue, puppet, prefetch=prefetch)
    await asyncio.sleep(b.quiet)
    assert puppet.held.qsize() == 0
    assert await b.broker.in_flight(b.queue) == 1
