"""Retrying a job on the in-memory store and broker: a new job of exactly
the failed items, with their payloads, each in its own stage; seal rules;
refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobtrack.broker import InMemoryBroker
from jobtrack.errors import Conflict, InvalidRequest, JobNotFound
from jobtrack.jobs.messages import ItemMessage, decode_item
from jobtrack.jobs.retry import stages_left_open
from jobtrack.jobs.types import Item, JobType
from jobtrack.model import Job, JobStatus
from jobtrack.runtime import App, Settings
from jobtrack.store.ledger import LedgerItem


def chain() -> JobType:
    """fetch feeds parse feeds save (both discovered); notify: the producer's."""
    job_type = JobType("chain", ["fetch", "parse", "save", "notify"])

    @job_type.handler("fetch", feeds=["parse"])
    def fetch(item: Item) -> None: ...

    @job_type.handler("parse", feeds=["save"])
    def parse(item: Item) -> None: ...

    @job_type.handler("save")
    def save(item: Item) -> None: ...

    @job_type.handler("notify")
    def notify(item: Item) -> None: ...

    return job_type


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    async with App(
        Settings(data_dir=tmp_path, store_url="memory://"), job_types=[chain()]
    ) as opened:
        yield opened


def drain(app: App, stage: str) -> list[ItemMessage]:
    broker = app.broker
    assert isinstance(broker, InMemoryBroker)
    ready = broker.queue(f"jobtrack.chain.{stage}").ready
    taken = []
    while not ready.empty():
        taken.append(decode_item(ready.get_nowait().body))
    return taken


async def ended_job(
    app: App, failed: dict[str, list[str]], *, done: dict[str, list[str]] | None = None
) -> Job:
    """A job that ran to its end: ``failed`` items failed, ``done`` done, per stage."""
    store = app.store
    job = await store.create_job("chain", chain().stages, attributes={"source": "s3"})
    for stage in job.stages:
        keys = failed.get(stage, [])
        good = (done or {}).get(stage, [])
        await store.add_items(job.id, stage, [LedgerItem(k, {"k": k}) for k in keys + good])
        await store.seal_total(job.id, stage)
        for key in keys:
            await store.record_failure(job.id, stage, key, f"{key} broke", attempts=3)
            await store.increment(job.id, stage, completed=0, failed=1, item_key=key)
        for key in good:
            await store.increment(job.id, stage, item_key=key)
    ended = await store.get_job(job.id)
    assert ended.status.terminal
    return ended


async def test_a_retry_does_exactly_the_failed_items_with_their_payloads(app: App) -> None:
    old = await ended_job(
        app,
        {"fetch": ["f1"], "save": ["s1", "s2"], "notify": ["n1"]},
        done={"parse": ["p1"]},
    )
    new = await app.retry_job(old.id)
    assert new.id != old.id
    assert new.job_type == "chain"
    assert new.attributes == {"source": "s3", "retry_of": old.id}
    assert new.status is not JobStatus.CANCELLED
    totals = {name: (s.total_items, s.total_final) for name, s in new.stages.items()}
    # fetch got items (sealed); parse, fed by fetch, and save, fed by parse,
    # are left to seal themselves; notify got items (sealed).
    assert totals == {
        "fetch": (1, True),
        "parse": (0, False),
        "save": (2, False),
        "notify": (1, True),
    }
    sent = {stage: [(m.key, m.payload) for m in drain(app, stage)] for stage in new.stages}
    assert sent == {
        "fetch": [("f1", {"k": "f1"})],
        "parse": [],
        "save": [("s1", {"k": "s1"}), ("s2", {"k": "s2"})],
        "notify": [("n1", {"k": "n1"})],
    }
    ledger = await app.store.ledger_items(new.id, "save", ["s1", "s2"])
    assert ledger == [LedgerItem("s1", {"k": "s1"}), LedgerItem("s2", {"k": "s2"})]
    events = await app.store.list_events(old.id)
    assert [(e.kind, e.message, e.data) for e in events] == [
        (
            "retried",
            f"4 failed items retried as job {new.id}",
            {"job_id": new.id, "items": {"fetch": 1, "save": 2, "notify": 1}},
        )
    ]


async def test_stages_without_items_are_sealed_unless_a_feeder_got_some(app: App) -> None:
    old = await ended_job(app, {"parse": ["p1"]})
    new = await app.retry_job(old.id)
    totals = {name: (s.total_items, s.total_final) for name, s in new.stages.items()}
    # parse's feeder got nothing: parse is sealed with its item; save is fed by parse.
    assert totals == {
        "fetch": (0, True),
        "parse": (1, True),
        "save": (0, False),
        "notify": (0, True),
    }
    assert [m.key for m in drain(app, "parse")] == ["p1"]


def test_the_stages_left_open() -> None:
    job_type = chain()
    assert stages_left_open(job_type, {"fetch"}) == {"parse", "save"}
    assert stages_left_open(job_type, {"parse"}) == {"save"}
    assert stages_left_open(job_type, {"save", "notify"}) == set()


async def test_every_page_of_failures_is_retried(app: App) -> None:
    keys = [f"n{n:04}" for n in range(2_500)]
    async with app.start_job("chain") as producer:
        await producer.add("notify", [(k, n) for n, k in enumerate(keys)])
    job = producer.job
    for key in keys:
        await app.store.record_failure(job.id, "notify", key, "down")
    await app.store.end_job(job.id, JobStatus.FAILED, message="gave up")
    drain(app, "notify")
    new = await app.retry_job(job.id)
    assert new.stages["notify"].total_items == 2_500
    assert [(m.key, m.payload) for m in drain(app, "notify")] == [
        (k, n) for n, k in enumerate(keys)
    ]


async def test_refusals(app: App) -> None:
    with pytest.raises(JobNotFound):
        await app.retry_job("no-such-job")
    async with app.start_job("chain") as producer:
        await producer.add("notify", ["a"])
    running = producer.job
    with pytest.raises(Conflict, match="still running"):
        await app.retry_job(running.id)
    await app.store.end_job(running.id, JobStatus.CANCELLED)
    with pytest.raises(InvalidRequest, match="cancelled"):
        await app.retry_job(running.id)
    clean = await ended_job(app, {}, done={"parse": ["p"]})
    assert clean.status is JobStatus.COMPLETED
    with pytest.raises(Conflict, match="no failed items"):
        await app.retry_job(clean.id)
    foreign = await app.store.create_job("elsewhere", ["one"])
    await app.store.end_job(foreign.id, JobStatus.FAILED)
    with pytest.raises(InvalidRequest, match="not registered"):
        await app.retry_job(foreign.id)
    assert [j.id for j in await app.store.list_jobs()] == [foreign.id, clean.id, running.id]


async def test_a_failed_publish_cancels_the_new_job(app: App) -> None:
    old = await ended_job(app, {"notify": ["n1"]})

    class Refusing(InMemoryBroker):
        async def publish_many(self, queue: str, bodies: object) -> None:
            raise RuntimeError("refused")

    app._broker = Refusing()  # the app's broker, replaced
    with pytest.raises(RuntimeError, match="refused"):
        await app.retry_job(old.id)
    (new, _old) = await app.store.list_jobs()
    assert new.attributes["retry_of"] == old.id
    assert new.status is JobStatus.CANCELLED
    assert new.message == f"the retry of job {old.id} failed: RuntimeError('refused')"
    assert await app.store.list_events(old.id) == []
