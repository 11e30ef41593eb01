"""Every store backend and every broker, for the contract suites."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest

from jobtrack.broker import Broker, DeadLetter, InMemoryBroker, dead_letter_queue
from jobtrack.store import InMemoryJobStore, JobStore, SqliteJobStore
from tests import rabbitmq
from tests.conftest import SteppingClock
from tests.postgres import database_url, new_schema, require_server, scratch_database

BACKENDS = ["memory", "sqlite", "postgres"]
BROKERS = ["memory", "rabbitmq"]


@pytest.fixture(scope="module")
def postgres_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database for this test module alone."""
    require_server()
    with scratch_database(request.module.__name__.rsplit(".", 1)[-1][:20]) as name:
        yield name


def make_store(
    backend: str, tmp_path: Path, clock: SteppingClock, request: pytest.FixtureRequest
) -> JobStore:
    """A fresh, empty store of the named backend."""
    if backend == "memory":
        return InMemoryJobStore(clock=clock)
    if backend == "sqlite":
        return SqliteJobStore.open(str(tmp_path / "jobs.db"), clock=clock)
    if backend == "postgres":
        from jobtrack.store.postgres import PostgresJobStore

        database = request.getfixturevalue("postgres_database")
        url = database_url(database, schema=new_schema(database))
        return PostgresJobStore(url, clock=clock, max_size=4)
    raise AssertionError(backend)


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: SteppingClock
) -> AsyncIterator[JobStore]:
    """Each backend in turn."""
    backend = make_store(request.param, tmp_path, clock, request)
    yield backend
    await backend.aclose()


@dataclass(frozen=True, slots=True)
class BrokerUnderTest:
    """A broker for one contract test, with what the bodies need to know of it."""

    broker: Broker
    queue: str
    """A queue of this test alone."""
    lose_connection: Callable[[], Awaitable[None]]
    """Drop the broker's connection as a network fault would; it reconnects."""
    take_dead_letters: Callable[[], Awaitable[list[DeadLetter]]]
    """The dead letters of ``queue`` so far, oldest first, removed from the broker."""
    consumers: Callable[[], Awaitable[int]]
    """How many consumers ``queue`` has (RabbitMQ: as the server counts them;
    in process: the subscriptions not cancelled)."""
    quiet: float
    """Seconds after which a delivery that was going to come has come (the
    in-process broker delivers within a turn of the loop; RabbitMQ over the
    network)."""
    tells_unacked: bool = False
    """Whether :meth:`~jobtrack.broker.base.Broker.queue_stats` tells the
    messages delivered and not settled, and the oldest message's age (the
    in-process broker does; AMQP does not)."""


@pytest.fixture(scope="module")
def rabbitmq_vhost(request: pytest.FixtureRequest) -> Iterator[str]:
    """A RabbitMQ virtual host for this test module alone."""
    rabbitmq.require_server()
    with rabbitmq.scratch_vhost(request.module.__name__.rsplit(".", 1)[-1][:20]) as name:
        yield name


async def _take_rabbitmq_dead_letters(url: str, queue: str) -> list[DeadLetter]:
    from jobtrack.broker.rabbitmq import COUNT_HEADER, REASON_HEADER

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        dead = await channel.get_queue(dead_letter_queue(queue), ensure=False)
        letters = []
        while (message := await dead.get(fail=False, timeout=5)) is not None:
            await message.ack()
            headers = message.headers or {}
            count = headers[COUNT_HEADER]
            assert isinstance(count, int)
            letters.append(DeadLetter(message.body, str(headers[REASON_HEADER]), count))
        return letters
    finally:
        await connection.close()


async def _rabbitmq_consumers(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.consumer_count
        assert isinstance(count, int)
        return count
    finally:
        await connection.close()


def make_broker(name: str, request: pytest.FixtureRequest) -> BrokerUnderTest:
    """A fresh broker of the named kind, and a queue no other test uses."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    if name == "memory":
        memory = InMemoryBroker()

        async def take_memory() -> list[DeadLetter]:
            return memory.dead_letters.pop(dead_letter_queue(queue), [])

        async def memory_consumers() -> int:
            return memory.consumers(queue)

        return BrokerUnderTest(
            memory,
            queue,
            memory.drop_connection,
            take_memory,
            memory_consumers,
            quiet=0.05,
            tells_unacked=True,
        )
    if name == "rabbitmq":
        from jobtrack.broker.rabbitmq import RabbitMQBroker

        vhost: str = request.getfixturevalue("rabbitmq_vhost")
        url = rabbitmq.vhost_url(vhost)

        async def close_connections() -> None:
            await asyncio.to_thread(
                rabbitmq.rabbitmqctl, "close_all_connections", "-p", vhost, "jobtrack test"
            )

        async def take_rabbitmq() -> list[DeadLetter]:
            return await _take_rabbitmq_dead_letters(url, queue)

        async def rabbitmq_consumers() -> int:
            return await _rabbitmq_consumers(url, queue)

        return BrokerUnderTest(
            RabbitMQBroker(url),
            queue,
            close_connections,
            take_rabbitmq,
            rabbitmq_consumers,
            quiet=0.5,
        )
    raise AssertionError(name)


@pytest.fixture(params=BROKERS)
async def under_test(request: pytest.FixtureRequest) -> AsyncIterator[BrokerUnderTest]:
    """Each broker in turn."""
    made = make_broker(request.param, request)
    yield made
    await made.broker.aclose()
