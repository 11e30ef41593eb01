"""The broker contract of what an operator reads and does: a queue's
numbers, the listing of its dead letters (which leaves every one in
place) and sending chosen ones back or dropping them; the same bodies
against the in-process broker and RabbitMQ (a virtual host for this module,
a queue for each test)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
import pytest

from jobtrack.broker import dead_letter_queue
from jobtrack.errors import NotFound, TooManyDeadLetters
from tests import rabbitmq
from tests.contract.conftest import BrokerUnderTest
from tests.contract.test_broker_contract import REJECTED, puppet_on, until

pytestmark = pytest.mark.timeout(60)


async def dead_count(b: BrokerUnderTest) -> int:
    """The messages in the test queue's dead-letter queue, as the broker counts them."""
    return (await b.broker.queue_stats(dead_letter_queue(b.queue))).messages


async def rejected(b: BrokerUnderTest, bodies: list[bytes]) -> None:
    """``bodies`` published to the test's queue, each rejected once."""
    puppet, subscription = await puppet_on(b, bodies, prefetch=1)
    for _ in bodies:
        (await puppet.next()).settle("reject")
        await puppet.next_finished()
    await subscription.cancel()


async def test_a_queue_never_used_has_no_messages_and_no_consumers(
    under_test: BrokerUnderTest,
) -> None:
    stats = await under_test.broker.queue_stats(under_test.queue + ".never")
    assert (stats.queue, stats.messages, stats.consumers) == (under_test.queue + ".never", 0, 0)
    assert stats.oldest_seconds is None


async def test_stats_count_ready_messages_consumers_and_what_is_held(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    puppet, subscription = await puppet_on(b, [b"a", b"b", b"c"], prefetch=1)
    held = await puppet.next()

    async def two_ready() -> bool:
        return (await b.broker.queue_stats(b.queue)).messages == 2

    await until(two_ready)
    stats = await b.broker.queue_stats(b.queue)
    assert (stats.messages, stats.consumers) == (2, 1)
    assert stats.unacked == (1 if b.tells_unacked else None)
    if b.tells_unacked:
        assert stats.oldest_seconds is not None
        assert stats.oldest_seconds >= 0
    held.settle("ack")
    await puppet.next_finished()
    await puppet.next()  # `b`, held: cancelling gives it back
    await subscription.cancel()
    stats = await b.broker.queue_stats(b.queue)
    assert (stats.messages, stats.consumers) == (2, 0)


async def test_listing_dead_letters_keeps_every_one_with_a_stable_id(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    await rejected(b, [b"one", b"two", b"three"])
    assert await dead_count(b) == 3
    first = await b.broker.dead_messages(b.queue, limit=10)
    assert [(d.body, d.reason, d.delivery_count) for d in first] == [
        (b"one", REJECTED, 1),
        (b"two", REJECTED, 1),
        (b"three", REJECTED, 1),
    ]
    assert len({d.id for d in first}) == 3
    assert all(d.died_at is not None for d in first)
    assert await dead_count(b) == 3  # the listing left them all
    for _ in range(3):  # again and again: the same ids, nothing lost
        again = await b.broker.dead_messages(b.queue, limit=10)
        assert [d.id for d in again] == [d.id for d in first]
    assert await dead_count(b) == 3
    assert [d.body for d in await b.broker.dead_messages(b.queue, limit=2)] == [b"one", b"two"]
    assert await dead_count(b) == 3


async def test_requeue_sends_the_chosen_dead_letters_back_to_their_queue(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    await rejected(b, [b"one", b"two", b"three"])
    listed = await b.broker.dead_messages(b.queue, limit=10)
    taken = await b.broker.settle_dead(b.queue, [listed[1].id], requeue=True)
    assert [d.body for d in taken] == [b"two"]
    assert await dead_count(b) == 2
    assert [d.id for d in await b.broker.dead_messages(b.queue, limit=10)] == [
        listed[0].id,
        listed[2].id,
    ]
    assert (await b.broker.queue_stats(b.queue)).messages == 1
    puppet, subscription = await puppet_on(b, [], prefetch=1)
    back = await puppet.next()
    assert back.delivery.body == b"two"
    back.settle("ack")
    await puppet.next_finished()
    await subscription.cancel()
    assert (await b.broker.queue_stats(b.queue)).messages == 0


async def test_drop_takes_the_chosen_dead_letters_and_all_takes_the_rest(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    await rejected(b, [b"one", b"two", b"three"])
    listed = await b.broker.dead_messages(b.queue, limit=10)
    taken = await b.broker.settle_dead(b.queue, [listed[0].id, listed[2].id], requeue=False)
    assert [d.body for d in taken] == [b"one", b"three"]
    assert await dead_count(b) == 1
    assert (await b.broker.queue_stats(b.queue)).messages == 0  # dropped, not sent back
    rest = await b.broker.settle_dead(b.queue, None, requeue=False)
    assert [d.id for d in rest] == [listed[1].id]
    assert await dead_count(b) == 0
    assert await b.broker.settle_dead(b.queue, None, requeue=True) == []


async def test_an_unknown_id_is_named_and_nothing_is_taken(under_test: BrokerUnderTest) -> None:
    b = under_test
    await rejected(b, [b"one", b"two"])
    listed = await b.broker.dead_messages(b.queue, limit=10)
    with pytest.raises(NotFound, match="no dead letter nope"):
        await b.broker.settle_dead(b.queue, [listed[0].id, "nope"], requeue=True)
    assert await dead_count(b) == 2
    assert (await b.broker.queue_stats(b.queue)).messages == 0
    assert [d.id for d in await b.broker.dead_messages(b.queue, limit=10)] == [d.id for d in listed]


async def test_a_listing_never_changes_the_order_partial_or_whole(
    under_test: BrokerUnderTest,
) -> None:
    """A quorum queue puts a message given back behind those given back
    before: a partial listing after a whole one must not move the first
    letters to the end."""
    b = under_test
    died = [f"m{i}".encode() for i in range(6)]
    await rejected(b, died)
    for limit in (2, 10, 2, 1, 10, 3):
        assert [d.body for d in await b.broker.dead_messages(b.queue, limit=limit)] == died[:limit]
        assert [d.body for d in await b.broker.dead_messages(b.queue, limit=10)] == died
        assert await dead_count(b) == 6


async def test_sending_back_or_dropping_some_keeps_the_others_in_order(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    died = [f"m{i}".encode() for i in range(6)]
    await rejected(b, died)
    listed = await b.broker.dead_messages(b.queue, limit=10)
    await b.broker.settle_dead(b.queue, [listed[1].id, listed[4].id], requeue=False)
    kept = [died[0], died[2], died[3], died[5]]
    assert [d.body for d in await b.broker.dead_messages(b.queue, limit=10)] == kept
    first = await b.broker.settle_dead(b.queue, None, requeue=False, most=3)
    assert [d.body for d in first] == kept[:3]
    assert [d.body for d in await b.broker.dead_messages(b.queue, limit=10)] == kept[3:]


async def test_an_id_held_by_another_listing_is_found_once_given_back(
    under_test: BrokerUnderTest,
) -> None:
    b = under_test
    await rejected(b, [b"one", b"two"])
    listed = await b.broker.dead_messages(b.queue, limit=10)
    listings = [b.broker.dead_messages(b.queue, limit=10) for _ in range(3)]
    settling = b.broker.settle_dead(b.queue, [listed[1].id], requeue=False)
    *again, taken = await asyncio.gather(*listings, settling)
    assert [d.body for d in taken] == [b"two"]
    assert await dead_count(b) == 1
    assert [d.body for d in await b.broker.dead_messages(b.queue, limit=10)] == [b"one"]
    assert all(len(one) <= 2 for one in again)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_rabbitmq_keeps_the_order_and_marks_what_it_sends_back(
    rabbitmq_vhost: str, queue_type: str
) -> None:
    """On both queue types: listings in any order leave the dead letters
    as they died; one sent back carries its dead letter's id as message id
    and the dead-letter queue in ``x-jobtrack-requeued-from``."""
    from jobtrack.broker.rabbitmq import REQUEUED_HEADER, RabbitMQBroker

    url = rabbitmq.vhost_url(rabbitmq_vhost, queue_type=queue_type)
    broker = RabbitMQBroker(url)
    queue = f"q-{queue_type}-{uuid.uuid4().hex[:8]}"
    died = [f"m{i}".encode() for i in range(6)]
    b = BrokerUnderTest(broker, queue, _never, _never, _never, quiet=0.5)
    try:
        await rejected(b, died)
        for limit in (2, 10, 2, 1, 10):
            listed = await broker.dead_messages(queue, limit=limit)
            assert [d.body for d in listed] == died[:limit]
            assert [d.body for d in await broker.dead_messages(queue, limit=10)] == died
        listed = await broker.dead_messages(queue, limit=10)
        await broker.settle_dead(queue, [listed[2].id], requeue=True)
        rest = [died[i] for i in (0, 1, 3, 4, 5)]
        assert [d.body for d in await broker.dead_messages(queue, limit=10)] == rest
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            back = await declared.get(no_ack=True, fail=True, timeout=5)
            assert (back.body, back.message_id) == (died[2], listed[2].id)
            assert (back.headers or {}).get(REQUEUED_HEADER) == dead_letter_queue(queue)
        finally:
            await connection.close()
    finally:
        await broker.aclose()


async def _never() -> Any:
    raise AssertionError("not used here")


async def test_more_dead_letters_than_are_held_at_once_is_an_error_that_changes_nothing(
    under_test: BrokerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = under_test
    await rejected(b, [b"one", b"two", b"three"])
    module = type(b.broker).__module__
    monkeypatch.setattr(f"{module}.MAX_HELD_DEAD", 2)
    with pytest.raises(TooManyDeadLetters, match="holds 3 dead letters, more than the 2"):
        await b.broker.dead_messages(b.queue, limit=1)
    with pytest.raises(TooManyDeadLetters):
        await b.broker.settle_dead(b.queue, None, requeue=True)
    assert await dead_count(b) == 3
    assert (await b.broker.queue_stats(b.queue)).messages == 0
    monkeypatch.setattr(f"{module}.MAX_HELD_DEAD", 3)
    assert [d.body for d in await b.broker.dead_messages(b.queue, limit=3)] == [
        b"one",
        b"two",
        b"three",
    ]
