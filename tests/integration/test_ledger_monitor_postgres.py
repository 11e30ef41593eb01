"""The ledger monitor on PostgreSQL and RabbitMQ, the clock moved by hand: a
job produced from plain code, its messages lost, exactly the missing items
re-driven each round, then the job failed with those items kept as failures,
which a retry does again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobtrack.broker import Broker
from jobtrack.broker.base import Delivery
from jobtrack.broker.rabbitmq import RabbitMQBroker
from jobtrack.jobs.messages import ItemMessage, decode_item
from jobtrack.jobs.reconciler import LedgerReconciler
from jobtrack.jobs.types import Item, JobType
from jobtrack.model import JobStatus
from jobtrack.monitor import Monitor
from jobtrack.runtime import App, Settings
from jobtrack.store.postgres import PostgresJobStore
from tests.conftest import FrozenClock
from tests.rabbitmq import require_server, scratch_vhost, vhost_url

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not hasattr(PostgresJobStore, "add_items"),
        reason="the PostgreSQL store has no item ledger yet",
    ),
]

STUCK_AFTER = 300.0
KEYS = [f"row-{n:03}" for n in range(40)]


def sync_type() -> JobType:
    job_type = JobType("rows", ["load", "index"])

    @job_type.handler("load", feeds=["index"])
    def load(item: Item) -> None: ...

    @job_type.handler("index")
    def index(item: Item) -> None: ...

    return job_type


@pytest.fixture(scope="module")
def amqp_url() -> Iterator[str]:
    require_server()
    with scratch_vhost("ledger") as vhost:
        yield vhost_url(vhost)


async def take(broker: Broker, queue: str, expected: int) -> list[ItemMessage]:
    """Consume ``expected`` messages of ``queue`` and ack them, doing nothing
    (the work is lost); then check that nothing more is queued."""
    taken: list[ItemMessage] = []
    enough = asyncio.Event()

    async def lose(delivery: Delivery) -> None:
        taken.append(decode_item(delivery.body))
        await delivery.ack()
        if len(taken) >= expected:
            enough.set()

    subscription = await broker.consume(queue, lose, prefetch=50)
    await asyncio.wait_for(enough.wait(), 30)
    await subscription.cancel(grace=5)
    assert len(taken) == expected
    assert await broker.in_flight(queue) == 0
    return taken


def test_a_job_produced_from_plain_code_is_redriven_then_failed_then_retried(
    postgres_url: str, amqp_url: str, tmp_path: Path
) -> None:
    job_type = sync_type()
    app = App(
        Settings(data_dir=tmp_path, store_url=postgres_url, broker_url=amqp_url),
        job_types=[job_type],
    )
    with app.start_job_sync("rows", attributes={"table": "t"}) as producer:
        assert producer.add("load", [(key, {"n": n}) for n, key in enumerate(KEYS)]) == 40
    job = producer.job
    assert job.stages["load"].total_items == 40
    assert job.stages["load"].total_final
    assert not job.stages["index"].total_final
    asyncio.run(_lose_redrive_fail_retry(job.id, job_type, postgres_url, amqp_url, tmp_path))


async def _lose_redrive_fail_retry(
    job_id: str, job_type: JobType, postgres_url: str, amqp_url: str, tmp_path: Path
) -> None:
    clock = FrozenClock()
    store = PostgresJobStore(postgres_url, clock=clock)
    broker = RabbitMQBroker(amqp_url)
    queue = job_type.queue("load")
    try:
        lost = await take(broker, queue, 40)
        assert sorted(m.key for m in lost) == KEYS
        done = KEYS[:30]
        for key in done[:25]:
            await store.increment(job_id, "load", item_key=key)
        for key in done[25:]:
            await store.record_failure(job_id, "load", key, "bad row")
            await store.increment(job_id, "load", completed=0, failed=1, item_key=key)
        missing = KEYS[30:]
        monitor = Monitor(
            store,
            [LedgerReconciler(job_type, store, broker)],
            stuck_after=STUCK_AFTER,
            clock=clock,
            max_redrives=2,
        )
        clock.now = (await store.get_job(job_id)).updated_at
        for round_ in (1, 2):
            clock.advance(STUCK_AFTER + 1)
            report = await monitor.cycle()
            assert (report.stuck, report.redriven, report.items_redriven) == (1, 1, 10)
            again = await take(broker, queue, 10)
            assert sorted(m.key for m in again) == missing
            assert {m.key: m.payload for m in again} == {
                key: {"n": KEYS.index(key)} for key in missing
            }
            events = await store.list_events(job_id)
            assert (events[-1].kind, events[-1].data["round"]) == ("redriven", round_)
        clock.advance(STUCK_AFTER + 1)
        report = await monitor.cycle()
        assert (report.failed, report.items_failed, report.redriven) == (1, 10, 0)
        failed = await store.get_job(job_id)
        assert failed.status is JobStatus.FAILED
        load = failed.stages["load"]
        assert (load.total_items, load.completed_items, load.failed_items) == (40, 25, 5)
        failures = await store.list_failures(job_id, limit=100)
        assert [(f.key, f.error) for f in failures] == [
            *((key, "bad row") for key in done[25:]),
            *((key, "not done after 2 re-drives") for key in missing),
        ]
        async with App(
            Settings(data_dir=tmp_path, store_url=postgres_url, broker_url=amqp_url),
            job_types=[job_type],
        ) as app:
            retry = await app.retry_job(job_id)
        assert retry.attributes == {"table": "t", "retry_of": job_id}
        assert retry.stages["load"].total_items == 15
        redo = await take(broker, queue, 15)
        assert sorted(m.key for m in redo) == sorted([*done[25:], *missing])
        assert {m.job_id for m in redo} == {retry.id}
    finally:
        await broker.aclose()
        await store.aclose()
