"""Malformed messages on a real consumer path: each is dead-lettered with
its reason, and every item of the job they came among is counted.

The property runs on the in-process broker and a SQLite store (a new app
each example); one test runs the same on RabbitMQ, in a virtual host of its
own, its dead letters read back with their reason header.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from jobtrack import App, Item, JobType, Settings
from jobtrack.broker import InMemoryBroker, dead_letter_queue
from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.model import JobStatus
from tests.fuzz.strategies import dumps, fuzz_settings, json_values
from tests.rabbitmq import require_server, scratch_vhost, vhost_url

TYPE, STAGE = "fuzzed", "work"
KEYS = [f"item-{n}" for n in range(5)]
#: Valid messages in every other way, for a job that does not exist.
TEMPLATE: dict[str, Any] = {
    "job_id": "no-such-job",
    "job_type": TYPE,
    "stage": STAGE,
    "key": "k",
    "payload": None,
    "attempt": 1,
    "v": 1,
}
#: The bodies that showed defects, and one of each kind of refusal.
KNOWN_BAD = [
    b"",
    b"\xff\xfe not json",
    dumps(TEMPLATE)[:-1] + b', "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    dumps(TEMPLATE | {"attempt": 2**40}),
    dumps(TEMPLATE | {"job_id": "a\x00b"}),
    dumps(TEMPLATE | {"key": "\ud800"}),
    dumps(TEMPLATE | {"stage": "another"}),
    dumps(TEMPLATE | {"extra": True}),
    dumps(TEMPLATE),  # well formed, for no job
]


def _done(item: Item) -> None:
    """The stage's work: nothing, done."""


def job_type() -> JobType:
    fuzzed = JobType(TYPE, [STAGE])
    fuzzed.handler(STAGE)(_done)
    return fuzzed


async def until(check: Callable[[], Awaitable[bool]], within: float = 60) -> None:
    """Wait until ``check()`` holds (the broker has no drained event)."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 (polling the store and the broker)
            await asyncio.sleep(0.02)


async def run_job(settings: Settings, bad: Sequence[bytes]) -> tuple[App, str]:
    """A job of :data:`KEYS` worked by the app's own consumers, with ``bad``
    published on its queue between two batches; returns once it has ended
    and the queue is empty."""
    app = App(settings, job_types=[job_type()])
    queue = app.get_type(TYPE).queue(STAGE)
    async with app, app.working(concurrency=2):
        async with app.start_job(TYPE) as producer:
            await producer.add(STAGE, KEYS[:2])
            await app.broker.publish_many(queue, bad)
            await producer.add(STAGE, KEYS[2:])
        job_id = producer.job.id

        async def ended() -> bool:
            return (await app.store.get_job(job_id)).status.terminal

        async def drained() -> bool:
            return await app.broker.in_flight(queue) == 0

        await until(ended)
        await until(drained)
        job = await app.store.get_job(job_id)
        assert job.status is JobStatus.COMPLETED, job.to_dict()
        stage = job.stage(STAGE)
        assert (stage.total_items, stage.completed_items, stage.failed_items) == (5, 5, 0)
        if isinstance(app.broker, InMemoryBroker):
            dead = app.broker.dead_letters.get(dead_letter_queue(queue), [])
            assert sorted(d.body for d in dead) == sorted(bad)
            assert all(d.reason for d in dead)
    return app, job.id


mutations = st.dictionaries(st.sampled_from(sorted(TEMPLATE)), json_values, min_size=1)
bad_bodies = st.lists(
    st.binary(max_size=80) | mutations.map(lambda changes: dumps(TEMPLATE | changes)),
    max_size=5,
)


@fuzz_settings(max_examples=20)
@given(bad=bad_bodies)
@example(bad=KNOWN_BAD)
def test_malformed_messages_are_dead_lettered_and_every_item_counts(bad: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=Path(folder), store_url=f"sqlite:///{folder}/jobtrack.db")
        asyncio.run(run_job(settings, bad))


def test_an_item_message_of_the_job_with_an_absurd_attempt_is_dead_lettered(
    tmp_path: Path,
) -> None:
    """Before the bound on ``attempt``, such a message of a real job was
    taken as one more try of its item (its work ran again), and had the
    item failed, its failure record would not fit PostgreSQL's ``integer``."""

    async def run() -> None:
        settings = Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path}/jobtrack.db")
        app = App(settings, job_types=[job_type()])
        queue = app.get_type(TYPE).queue(STAGE)
        async with app, app.working():
            async with app.start_job(TYPE) as producer:
                await producer.add(STAGE, KEYS)
                absurd = ItemMessage(producer.job.id, TYPE, STAGE, KEYS[0], attempt=1)
                body = encode_item(absurd).replace(b'"attempt":1', b'"attempt":1099511627776')
                await app.broker.publish(queue, body)

            async def drained() -> bool:
                return await app.broker.in_flight(queue) == 0

            await until(drained)
            assert isinstance(app.broker, InMemoryBroker)
            [dead] = app.broker.dead_letters[dead_letter_queue(queue)]
            assert dead.body == body
            assert dead.reason == "item message with attempt 1099511627776 (1 to 2147483647)"
            stage = (await app.store.get_job(producer.job.id)).stage(STAGE)
            assert (stage.completed_items, stage.failed_items) == (5, 0)

    asyncio.run(run())


async def dead_letters(url: str, queue: str) -> list[tuple[bytes, str]]:
    connection = await aio_pika.connect(url)
    found = []
    try:
        channel = await connection.channel()
        dead = await channel.get_queue(dead_letter_queue(queue), ensure=False)
        while (message := await dead.get(fail=False, timeout=5)) is not None:
            found.append((message.body, str(message.headers["x-jobtrack-reason"])))
            await message.ack()
    finally:
        await connection.close()
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_on_rabbitmq_malformed_messages_are_dead_lettered_with_their_reason(
    tmp_path: Path,
) -> None:
    require_server()
    with scratch_vhost("fuzz") as vhost:
        url = vhost_url(vhost)
        settings = Settings(
            data_dir=tmp_path, store_url=f"sqlite:///{tmp_path}/jobtrack.db", broker_url=url
        )
        app, _ = asyncio.run(run_job(settings, KNOWN_BAD))
        found = asyncio.run(dead_letters(url, app.get_type(TYPE).queue(STAGE)))
    assert sorted(body for body, _ in found) == sorted(KNOWN_BAD)
    reasons = dict(found)
    assert reasons[KNOWN_BAD[2]] == "malformed item message: its payload is nested too deep"
    assert reasons[KNOWN_BAD[3]] == "item message with attempt 1099511627776 (1 to 2147483647)"
    assert reasons[KNOWN_BAD[6]] == (
        f"a {TYPE!r} 'another' message on the queue of {TYPE!r} {STAGE!r}"
    )
    assert reasons[KNOWN_BAD[8]] == "job 'no-such-job' not found"
    assert all(reason for reason in reasons.values())
