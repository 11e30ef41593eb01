"""The RabbitMQ backend against the real server: what only it does (queue
settings, persistence, classic queues, the server's delivery limit, merged
acks, resuming after a restart, a consumer the server cancels, the
heartbeat). What both brokers do is the contract suite's
(tests/contract/test_broker_contract.py).

Each test uses queues of its own in this module's virtual host.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aio_pika
import pytest

from jobtrack.broker import Delivery, dead_letter_queue
from jobtrack.broker.rabbitmq import COUNT_HEADER, REASON_HEADER, SOURCE_HEADER, RabbitMQBroker
from jobtrack.errors import BrokerError, BrokerUnavailable, InvalidRequest
from tests.rabbitmq import (
    queues,
    rabbitmqctl,
    require_server,
    restart_app,
    scratch_vhost,
    vhost_url,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    require_server()
    with scratch_vhost("broker") as name:
        yield name


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def broker(vhost: str) -> AsyncIterator[RabbitMQBroker]:
    broker = RabbitMQBroker(vhost_url(vhost))
    yield broker
    await broker.aclose()


async def drain(url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message waiting in ``queue``, taken with basic.get and acked."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.get_queue(queue, ensure=False)
        messages = []
        while (message := await declared.get(fail=False, timeout=5)) is not None:
            await message.ack()
            messages.append(message)
        return messages
    finally:
        await connection.close()


async def eventually(read: Callable[[], object], expected: object, within: float = 15) -> bool:
    """Whether ``read()`` gives ``expected`` within ``within`` seconds
    (``rabbitmqctl``'s figures lag by a few seconds)."""
    deadline = asyncio.get_running_loop().time() + within
    while (value := await asyncio.to_thread(read)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            print(f"still {value!r}, expected {expected!r}")
            return False
        await asyncio.sleep(0.5)
    return True


async def has_messages(broker: RabbitMQBroker, queue: str, count: int = 1) -> bool:
    return await broker.in_flight(queue) == count


async def until(check: Callable[[], Awaitable[bool]], within: float = 20) -> None:
    """Wait until ``check()`` is true; TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 (polling the server, not an event of ours)
            await asyncio.sleep(0.05)


class Recorder:
    """A handler that keeps each delivery and settles it as told."""

    def __init__(self, settle: str = "ack") -> None:
        self.settle = settle
        self.deliveries: list[Delivery] = []
        self.changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.changed.set()
        if self.settle == "ack":
            await delivery.ack()
        elif self.settle == "requeue":
            await delivery.nack(requeue=True)
        elif self.settle == "hold-then-decide":
            await asyncio.Event().wait()  # until cancelled

    async def wait_for(self, count: int, within: float = 20.0) -> None:
        async with asyncio.timeout(within):
            while len(self.deliveries) < count:
                self.changed.clear()
                await self.changed.wait()


async def test_queues_are_durable_quorum_queues_with_a_dead_letter_queue(
    broker: RabbitMQBroker, vhost: str, queue: str
) -> None:
    await broker.publish(queue, b"one")
    found = queues(vhost)
    main, dead = found[queue], found[dead_letter_queue(queue)]
    assert (main["durable"], main["type"], dead["durable"], dead["type"]) == (
        True,
        "quorum",
        True,
        "quorum",
    )
    arguments = {name: value for name, _, value in main["arguments"]}
    assert arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(queue),
        "x-delivery-limit": 20,
    }
    assert await broker.in_flight(queue) == 1


async def test_classic_queues_on_request(vhost: str, queue: str) -> None:
    broker = RabbitMQBroker(vhost_url(vhost, queue_type="classic"))
    try:
        await broker.publish(queue, b"one")
    finally:
        await broker.aclose()
    assert queues(vhost)[queue]["type"] == "classic"


async def test_messages_are_persistent_and_arrive_in_order(
    broker: RabbitMQBroker, vhost: str, queue: str
) -> None:
    await broker.publish_many(queue, [b"%d" % i for i in range(300)])
    assert await broker.in_flight(queue) == 300  # all held once publish_many returned
    messages = await drain(vhost_url(vhost), queue)
    assert [m.body for m in messages] == [b"%d" % i for i in range(300)]
    assert {m.delivery_mode for m in messages} == {aio_pika.DeliveryMode.PERSISTENT}


async def test_retry_puts_the_new_body_back_on_a_classic_queue_too(vhost: str, queue: str) -> None:
    # Classic queues do not count redeliveries; a retry carries its own count.
    broker = RabbitMQBroker(vhost_url(vhost, queue_type="classic"))
    try:
        await broker.publish(queue, b"attempt 1")
        seen: list[bytes] = []
        done = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            seen.append(delivery.body)
            attempt = int(delivery.body.split()[-1])
            if attempt < 4:
                await delivery.retry(b"attempt %d" % (attempt + 1))
            else:
                await delivery.ack()
                done.set()

        await broker.consume(queue, handler, prefetch=1)
        await asyncio.wait_for(done.wait(), 20)
        assert seen == [b"attempt 1", b"attempt 2", b"attempt 3", b"attempt 4"]
        assert await broker.in_flight(queue) == 0
    finally:
        await broker.aclose()


async def test_a_classic_queue_dead_letters_without_a_delivery_count(
    vhost: str, queue: str
) -> None:
    # A classic queue only says "redelivered": a count would be 2 for the
    # third delivery as for the second, so none is written.
    broker = RabbitMQBroker(vhost_url(vhost, queue_type="classic"))
    try:
        await broker.publish(queue, b"doomed")
        deliveries: list[int] = []

        async def handler(delivery: Delivery) -> None:
            deliveries.append(delivery.delivery_count)
            if len(deliveries) < 3:
                await delivery.nack(requeue=True)
            else:
                await delivery.nack(requeue=False, reason="no use")

        await broker.consume(queue, handler, prefetch=1)
        await until(lambda: has_messages(broker, dead_letter_queue(queue)))
    finally:
        await broker.aclose()
    assert deliveries == [1, 2, 2]
    (dead,) = await drain(vhost_url(vhost), dead_letter_queue(queue))
    assert dead.body == b"doomed"
    assert (dead.headers[REASON_HEADER], dead.headers[SOURCE_HEADER]) == ("no use", queue)
    assert COUNT_HEADER not in dead.headers


async def test_past_the_delivery_limit_the_server_dead_letters_the_message(
    vhost: str, queue: str
) -> None:
    broker = RabbitMQBroker(vhost_url(vhost, delivery_limit="2"))
    try:
        await broker.publish(queue, b"loops")
        recorder = Recorder("requeue")
        await broker.consume(queue, recorder, prefetch=1)
        await until(lambda: has_messages(broker, dead_letter_queue(queue)))
    finally:
        await broker.aclose()
    # Delivered, returned twice (the limit), then dead-lettered by the server.
    assert [d.delivery_count for d in recorder.deliveries] == [1, 2, 3]
    (dead,) = await drain(vhost_url(vhost), dead_letter_queue(queue))
    assert dead.body == b"loops"
    deaths: Any = dead.headers["x-death"]
    assert deaths[0]["reason"] == "delivery_limit"


async def test_acks_in_any_order_settle_exactly_the_acked_messages(
    broker: RabbitMQBroker, vhost: str, queue: str
) -> None:
    """Acks are merged (one basic.ack(multiple) for a settled run) but never
    settle a message that was not acked, whatever the order."""
    await broker.publish_many(queue, [b"%d" % i for i in range(12)])
    recorder = Recorder("hold-then-decide")
    subscription = await broker.consume(queue, recorder, prefetch=12)
    await recorder.wait_for(12)
    by_body = {d.body: d for d in recorder.deliveries}
    for body in (b"5", b"0", b"1", b"2", b"11", b"3", b"4", b"8"):
        await by_body[body].ack()
    await by_body[b"6"].nack(requeue=True)  # back to the queue, delivered again
    await recorder.wait_for(13)
    assert (recorder.deliveries[12].body, recorder.deliveries[12].delivery_count) == (b"6", 2)
    await recorder.deliveries[12].ack()
    await by_body[b"9"].ack()
    await asyncio.sleep(0.2)  # let the acks go out
    await subscription.cancel()  # 7 and 10 were never settled: the server takes them back
    left = await drain(vhost_url(vhost), queue)
    assert sorted(m.body for m in left) == [b"10", b"7"]


@pytest.mark.slow
async def test_consuming_and_publishing_resume_after_a_broker_restart(
    broker: RabbitMQBroker, vhost: str, queue: str
) -> None:
    recorder = Recorder("ack")
    await broker.consume(queue, recorder, prefetch=5)
    await broker.publish(queue, b"before")
    await recorder.wait_for(1)
    await asyncio.to_thread(restart_app, 1.0)
    # Published while the connection comes back: waits for it, then is confirmed.
    await broker.publish(queue, b"after")
    await recorder.wait_for(2, within=30)
    assert [d.body for d in recorder.deliveries] == [b"before", b"after"]
    assert await eventually(lambda: queues(vhost)[queue]["consumers"], 1)
    assert broker.connections == 2


async def test_a_consumer_the_server_cancels_consumes_again(
    broker: RabbitMQBroker, vhost: str, queue: str
) -> None:
    recorder = Recorder("ack")
    await broker.consume(queue, recorder, prefetch=5)
    connection = await aio_pika.connect(vhost_url(vhost))
    try:  # deleting the queue cancels its consumers (basic.cancel from the server)
        channel = await connection.channel()
        await channel.queue_delete(queue)
    finally:
        await connection.close()
    assert await eventually(lambda: queues(vhost).get(queue, {}).get("consumers"), 1)
    await broker.publish(queue, b"after")
    await recorder.wait_for(1)
    assert [d.body for d in recorder.deliveries] == [b"after"]
    assert broker.connections == 1  # the channel started over, not the connection


async def test_after_a_refused_declaration_publishing_goes_on(
    broker: RabbitMQBroker, vhost: str, queue: str
) -> None:
    connection = await aio_pika.connect(vhost_url(vhost))
    try:  # someone else's queue of that name, with other settings
        channel = await connection.channel()
        await channel.declare_queue(f"{queue}-taken", durable=False)
    finally:
        await connection.close()
    with pytest.raises(BrokerError, match="exists with other settings"):
        await broker.publish(f"{queue}-taken", b"refused")
    await broker.publish(queue, b"fine")  # on a publisher channel opened again
    assert await broker.in_flight(queue) == 1


async def test_the_heartbeat_is_set_in_the_url(vhost: str) -> None:
    broker = RabbitMQBroker(vhost_url(vhost, heartbeat="7"))
    try:
        await broker.connect()
        listed = json.loads(
            rabbitmqctl("list_connections", "vhost", "timeout", "--formatter", "json")
        )
    finally:
        await broker.aclose()
    assert [row["timeout"] for row in listed if row["vhost"] == vhost] == [7]


def test_bad_url_options_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="queue_type"):
        RabbitMQBroker("amqp://localhost/?queue_type=stream")
    with pytest.raises(InvalidRequest, match="delivery_limit"):
        RabbitMQBroker("amqp://localhost/?delivery_limit=0")
    with pytest.raises(InvalidRequest, match="not an AMQP URL"):
        RabbitMQBroker("http://localhost/")


async def test_in_flight_asked_while_the_server_closes_the_connection_waits_and_answers(
    broker: RabbitMQBroker, vhost: str, queue: str
) -> None:
    # The monitor asks every cycle; a connection lost during the question
    # was a bare ConnectionError (or aiormq's), which failed its whole cycle.
    await broker.publish_many(queue, [b"{}"] * 5)
    answers: list[int] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def ask() -> None:
        while not stop.is_set():
            try:
                answers.append(await broker.in_flight(queue))
            except Exception as exc:
                errors.append(exc)

    asker = asyncio.create_task(ask())
    await asyncio.sleep(0.3)
    for _ in range(3):
        await asyncio.to_thread(rabbitmqctl, "close_all_connections", "-p", vhost, "in-flight test")
        await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(asker, 60)
    assert errors == []
    assert set(answers) == {5}
    assert broker.connections >= 4  # the first, then once after each close


async def test_in_flight_asked_when_the_amqp_connection_closed_unnoticed_waits_and_answers(
    broker: RabbitMQBroker, queue: str
) -> None:
    # aiormq's connection can be closed while aio-pika's still says it is
    # connected; opening a channel then raised a RuntimeError at once, and a
    # caller asking again in a loop never let the event loop run.
    await broker.publish_many(queue, [b"{}"] * 5)
    connection = await broker._connected(10.0)
    assert connection.transport is not None
    # What aiormq's reader does on a close from the server, before the
    # callbacks that tell aio-pika (and the broker) have had their turn.
    closing: asyncio.Future[None] = connection.transport.connection._closing  # type: ignore[attr-defined]
    closing.set_exception(ConnectionError("closed by the server"))
    assert connection.connected.is_set()  # aio-pika has not been told
    assert not connection.is_closed
    assert await asyncio.wait_for(broker.in_flight(queue), 30) == 5


@pytest.fixture
def full_queue(vhost: str, queue: str) -> Iterator[str]:
    """``queue`` under a policy that makes the server nack a publish while
    it holds a message (max-length 0, reject-publish: a quorum queue takes
    one message, then nacks); a quorum queue nacks, too, while it has no
    leader (a node lost)."""
    rabbitmqctl(
        "set_policy",
        "-p",
        vhost,
        "--apply-to",
        "queues",
        f"full-{queue}",
        f"^{queue}$",
        json.dumps({"max-length": 0, "overflow": "reject-publish"}),
    )
    yield queue
    rabbitmqctl("clear_policy", "-p", vhost, f"full-{queue}")


async def declared_full(broker: RabbitMQBroker, vhost: str, queue: str) -> None:
    """Publish the queue's first message (declaring it), then wait until the
    server applies the policy to it (it does so in the background)."""
    await broker.publish(queue, b'{"n": 1}')
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        out = await asyncio.to_thread(
            rabbitmqctl, "list_queues", "-p", vhost, "name", "policy", "--formatter", "json"
        )
        if any(row["name"] == queue and row["policy"] for row in json.loads(out or "[]")):
            return
        assert asyncio.get_running_loop().time() < deadline, out
        await asyncio.sleep(0.2)


async def test_a_publish_the_server_nacks_is_sent_again_until_it_is_taken(
    vhost: str, full_queue: str
) -> None:
    # A nack says the server did not take the message this time; it was
    # raised at once as a refusal (BrokerError), which made a producer
    # cancel its job while a cluster node was lost.
    broker = RabbitMQBroker(vhost_url(vhost), publish_timeout=30)
    try:
        await declared_full(broker, vhost, full_queue)
        second = asyncio.create_task(broker.publish(full_queue, b'{"n": 2}'))
        await asyncio.sleep(1.5)
        assert not second.done()  # nacked, and sent again while the queue is full
        taken = await drain(vhost_url(vhost), full_queue)
        await asyncio.wait_for(second, 30)
        taken += await drain(vhost_url(vhost), full_queue)
    finally:
        await broker.aclose()
    assert sorted(message.body for message in taken) == [b'{"n": 1}', b'{"n": 2}']


async def test_a_publish_nacked_until_its_timeout_is_an_outage(vhost: str, full_queue: str) -> None:
    broker = RabbitMQBroker(vhost_url(vhost), publish_timeout=2)
    try:
        await declared_full(broker, vhost, full_queue)
        with pytest.raises(BrokerUnavailable, match="not confirmed"):
            await broker.publish(full_queue, b'{"n": 2}')
    finally:
        await broker.aclose()
    assert [message.body for message in await drain(vhost_url(vhost), full_queue)] == [b'{"n": 1}']
