"""The consumer of a user's job type: outcomes counted exactly, errors kept,
retries numbered, discovered work stored before the count, discovered
stages sealed when (and only when) their feeders complete."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jobtrack.broker import InMemoryBroker
from jobtrack.errors import InvalidRequest
from jobtrack.jobs import Item, JobType, Retry
from jobtrack.jobs.consumer import CRASH_ALLOWANCE, ItemConsumer
from jobtrack.jobs.executors import HandlerRunner
from jobtrack.jobs.gate import JobGate
from jobtrack.jobs.messages import ItemMessage, decode_item, encode_item
from jobtrack.jobs.sealer import Sealer
from jobtrack.model import Job, JobStatus
from jobtrack.runtime import App, Settings
from jobtrack.runtime.builtin import collection_scan_type
from jobtrack.runtime.worker import Worker
from jobtrack.store import InMemoryJobStore
from jobtrack.store.base import StageProgress
from jobtrack.store.ledger import LedgerItem
from jobtrack.tracking import ProgressTracker


class RecordingStore(InMemoryJobStore):
    """Remembers, in order, the ledger writes, the counts and the seals."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str, tuple[str, ...]]] = []
        self.seals: list[tuple[str, Job]] = []  # (stage sealed, the job just before)

    async def add_items(
        self, job_id: str, stage: str, items: Sequence[LedgerItem], *, seal: bool = False
    ) -> int:
        self.log.append(("ledger", stage, tuple(i.key for i in items)))
        return await super().add_items(job_id, stage, items, seal=seal)

    async def add_progress(self, batch: Sequence[StageProgress]) -> Any:
        for entry in batch:
            keys = (*entry.completed_keys, *entry.failed_keys)
            self.log.append(("count", entry.stage, tuple(keys)))
        return await super().add_progress(batch)

    async def seal_total(self, job_id: str, stage: str, *, total: int | None = None) -> Any:
        self.seals.append((stage, await self.get_job(job_id)))
        return await super().seal_total(job_id, stage, total=total)


@dataclass
class Rig:
    store: RecordingStore
    broker: InMemoryBroker
    tracker: ProgressTracker
    runner: HandlerRunner
    sealer: Sealer
    job_type: JobType
    consumers: dict[str, ItemConsumer] = field(default_factory=dict)

    async def start(self, *stages: str) -> None:
        for stage in stages or tuple(self.job_type.handlers):
            consumer = ItemConsumer(
                self.job_type,
                stage,
                store=self.store,
                broker=self.broker,
                tracker=self.tracker,
                runner=self.runner,
                gate=JobGate(self.store, ttl=0.0),
                sealer=self.sealer,
                retry_delay=0.0,
            )
            self.consumers[stage] = consumer
            await self.broker.consume(consumer.queue, consumer.handle, prefetch=4)

    async def job(self, keys: Sequence[str], payload: Any = None) -> str:
        """A job whose first stage has ``keys``, sealed, and published."""
        first = self.job_type.stages[0]
        job = await self.store.create_job(self.job_type.name, self.job_type.stages)
        items = [LedgerItem(key, payload) for key in keys]
        assert await self.store.add_items(job.id, first, items, seal=True) == len(keys)
        await self.publish(*(self.message(job.id, first, key, payload) for key in keys))
        return job.id

    def message(self, job_id: str, stage: str, key: str, payload: Any = None) -> ItemMessage:
        return ItemMessage(job_id, self.job_type.name, stage, key, payload)

    async def publish(self, *messages: ItemMessage, stage: str | None = None) -> None:
        for message in messages:
            await self.broker.publish(
                self.job_type.queue(stage or message.stage), encode_item(message)
            )

    async def settled(self) -> None:
        """Wait until every queue is empty and no sealing check is due."""
        async with asyncio.timeout(30):
            while True:  # the broker has no drained event
                busy = [
                    await self.broker.in_flight(self.job_type.queue(s))
                    for s in self.job_type.stages
                ]
                if not any(busy) and self.sealer.idle:
                    return
                await asyncio.sleep(0.01)

    async def counts(self, job_id: str, stage: str) -> tuple[int, int, int, bool]:
        current = (await self.store.get_job(job_id)).stage(stage)
        return (
            current.total_items,
            current.completed_items,
            current.failed_items,
            current.total_final,
        )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    store = RecordingStore()
    tracker = ProgressTracker(store, flush_interval=0.01)
    runner = HandlerRunner(2)
    rig = Rig(
        store,
        InMemoryBroker(),
        tracker,
        runner,
        Sealer(store, interval=0.01),
        JobType("t", ["a", "b", "c"], backoff=0.0),
    )
    yield rig
    await rig.broker.aclose()
    await rig.sealer.aclose()
    await tracker.flush(max_wait=5)
    runner.shutdown()


# Module-level: a process handler is called by name in a worker process.
def in_process(item: Item) -> None:
    if os.getpid() == item.payload["parent"]:
        raise RuntimeError("ran in the consumer's own process")
    if item.payload.get("fail"):
        raise ValueError(f"cannot do {item.key}")


def dies(item: Item) -> None:
    os._exit(3)


async def test_done_and_failed_items_are_counted_exactly_and_errors_kept(rig: Rig) -> None:
    done: list[str] = []

    @rig.job_type.handler("a")
    async def work(item: Item) -> None:
        if int(item.key) % 3 == 0:
            raise ValueError(f"no multiples of three: {item.key}")
        done.append(item.key)

    await rig.start("a")
    job_id = await rig.job([str(n) for n in range(1, 11)])
    await rig.settled()
    assert await rig.counts(job_id, "a") == (10, 7, 3, True)
    assert sorted(done, key=int) == ["1", "2", "4", "5", "7", "8", "10"]
    failures = await rig.store.list_failures(job_id)
    assert [(f.stage, f.key, f.error, f.attempts) for f in failures] == [
        ("a", key, f"ValueError: no multiples of three: {key}", 1) for key in ("3", "6", "9")
    ]


async def test_a_retryable_error_is_tried_again_until_max_attempts_then_fails(rig: Rig) -> None:
    rig.job_type = JobType("t", ["a"], retry_on=(TimeoutError,), max_attempts=3, backoff=0.0)
    attempts: dict[str, list[int]] = {"flaky": [], "down": []}

    @rig.job_type.handler("a")
    def work(item: Item) -> None:
        attempts[item.key].append(item.attempt)
        if item.key == "down" or item.attempt < 2:
            raise TimeoutError(f"{item.key} timed out")

    await rig.start()
    job_id = await rig.job(["flaky", "down"])
    await rig.settled()
    assert attempts == {"flaky": [1, 2], "down": [1, 2, 3]}
    assert await rig.counts(job_id, "a") == (2, 1, 1, True)
    [failure] = await rig.store.list_failures(job_id)
    assert (failure.key, failure.error, failure.attempts) == (
        "down",
        "TimeoutError: down timed out",
        3,
    )
    assert rig.broker.dead_letters == {}


async def test_retry_after_zero_is_tried_again_at_once_whatever_the_backoff(rig: Rig) -> None:
    rig.job_type = JobType("t", ["a"], backoff=3600.0, max_backoff=3600.0)
    attempts: list[int] = []

    @rig.job_type.handler("a")
    async def work(item: Item) -> None:
        attempts.append(item.attempt)
        if item.attempt == 1:
            raise Retry("not yet", after=0)

    await rig.start()
    job_id = await rig.job(["x"])
    await rig.settled()
    assert attempts == [1, 2]
    assert await rig.counts(job_id, "a") == (1, 1, 0, True)
    assert await rig.store.list_failures(job_id) == []


async def test_a_non_retryable_error_fails_at_once(rig: Rig) -> None:
    rig.job_type = JobType("t", ["a"], retry_on=(TimeoutError,), max_attempts=5, backoff=0.0)
    attempts: list[int] = []

    @rig.job_type.handler("a")
    def work(item: Item) -> None:
        attempts.append(item.attempt)
        raise KeyError("missing")

    await rig.start()
    job_id = await rig.job(["x"])
    await rig.settled()
    assert attempts == [1]
    [failure] = await rig.store.list_failures(job_id)
    assert (failure.error, failure.attempts) == ("KeyError: 'missing'", 1)


async def test_async_thread_and_process_handlers_each_run_where_they_should(rig: Rig) -> None:
    loop_thread = threading.get_ident()
    seen: dict[str, list[str]] = {"a": [], "b": []}

    @rig.job_type.handler("a", feeds=["b"])
    async def on_loop(item: Item) -> None:
        assert threading.get_ident() == loop_thread
        seen["a"].append(item.key)
        item.add("b", f"{item.key}.b", {"parent": os.getpid()})

    @rig.job_type.handler("b", feeds=["c"])
    def in_thread(item: Item) -> None:
        assert threading.get_ident() != loop_thread
        seen["b"].append(item.key)
        item.add("c", f"{item.key}.ok", item.payload)
        item.add("c", f"{item.key}.bad", {**item.payload, "fail": True})

    rig.job_type.handler("c", executor="process")(in_process)
    await rig.start()
    job_id = await rig.job(["1", "2"])
    await rig.settled()
    assert sorted(seen["a"]) == ["1", "2"]
    assert sorted(seen["b"]) == ["1.b", "2.b"]
    assert await rig.counts(job_id, "a") == (2, 2, 0, True)
    assert await rig.counts(job_id, "b") == (2, 2, 0, True)
    assert await rig.counts(job_id, "c") == (4, 2, 2, True)
    failures = await rig.store.list_failures(job_id)
    assert [(f.key, f.error) for f in failures] == [
        ("1.b.bad", "ValueError: cannot do 1.b.bad"),
        ("2.b.bad", "ValueError: cannot do 2.b.bad"),
    ]
    assert failures[0].payload == {"parent": os.getpid(), "fail": True}
    assert (await rig.store.get_job(job_id)).status.terminal


async def test_handlers_on_the_loop_and_in_threads_reach_the_consumers_app(
    rig: Rig, tmp_path: Path
) -> None:
    app = App(Settings(store_url="memory://", broker_url="memory://", data_dir=tmp_path))
    seen: dict[str, list[object]] = {"a": [], "b": []}

    @rig.job_type.handler("a")
    async def on_loop(item: Item) -> None:
        seen["a"].append(item.app)

    @rig.job_type.handler("b")
    def in_thread(item: Item) -> None:
        seen["b"].append(item.app)

    for stage in ("a", "b"):
        consumer = ItemConsumer(
            rig.job_type,
            stage,
            store=rig.store,
            broker=rig.broker,
            tracker=rig.tracker,
            runner=rig.runner,
            app=app,
        )
        await rig.broker.consume(consumer.queue, consumer.handle, prefetch=4)
    job = await rig.store.create_job("t", rig.job_type.stages)
    await rig.publish(rig.message(job.id, "a", "1"), rig.message(job.id, "b", "2"))
    await rig.settled()
    assert seen == {"a": [app], "b": [app]}


async def test_a_dying_worker_process_is_retried_then_fails_the_item(rig: Rig) -> None:
    rig.job_type = JobType("t", ["a"], max_attempts=2, backoff=0.0)
    rig.job_type.handler("a", executor="process")(dies)
    await rig.start()
    job_id = await rig.job(["x"])
    await rig.settled()
    assert await rig.counts(job_id, "a") == (1, 0, 1, True)
    [failure] = await rig.store.list_failures(job_id)
    assert failure.attempts == 2
    assert failure.error.startswith("the worker process died running the item")


async def test_discovered_work_is_stored_before_the_count_and_sealed_when_its_feeder_completes(
    rig: Rig,
) -> None:
    rig.job_type = JobType("crawl", ["pages", "links"])
    release = asyncio.Event()

    @rig.job_type.handler("pages", feeds=["links"])
    async def page(item: Item) -> None:
        if item.key == "p3":
            await release.wait()
        item.add("links", f"{item.key}.l1")
        item.add("links", f"{item.key}.l2")
        item.add("links", f"{item.key}.l1")  # twice: written once

    @rig.job_type.handler("links")
    async def link(item: Item) -> None:
        pass

    await rig.start()
    job_id = await rig.job(["p1", "p2", "p3"])
    async with asyncio.timeout(30):  # p1 and p2 done, their links too; p3 held
        while await rig.counts(job_id, "links") != (4, 4, 0, False):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        while await rig.counts(job_id, "pages") != (3, 2, 0, True):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert [stage for stage, _ in rig.store.seals] == []  # links not sealed while p3 runs
    release.set()
    await rig.settled()
    assert await rig.counts(job_id, "pages") == (3, 3, 0, True)
    assert await rig.counts(job_id, "links") == (6, 6, 0, True)
    assert (await rig.store.get_job(job_id)).status is JobStatus.COMPLETED
    [(stage, before)] = rig.store.seals
    assert stage == "links"
    assert (before.stage("pages").completed_items, before.stage("pages").total_final) == (3, True)
    for page_key in ("p1", "p2", "p3"):
        ledger = rig.store.log.index(("ledger", "links", (f"{page_key}.l1", f"{page_key}.l2")))
        count = next(
            n
            for n, (what, stage, keys) in enumerate(rig.store.log)
            if what == "count" and stage == "pages" and page_key in keys
        )
        assert ledger < count


async def test_a_message_delivered_twice_counts_once(rig: Rig) -> None:
    runs: list[str] = []

    @rig.job_type.handler("a")
    async def work(item: Item) -> None:
        runs.append(item.key)

    await rig.start("a")
    job_id = await rig.job(["x"])
    await rig.publish(rig.message(job_id, "a", "x"))
    await rig.settled()
    assert runs == ["x", "x"]
    assert await rig.counts(job_id, "a") == (1, 1, 0, True)


async def test_malformed_and_misrouted_messages_are_dead_lettered_with_their_reason(
    rig: Rig,
) -> None:
    @rig.job_type.handler("a")
    async def work(item: Item) -> None:
        pass

    await rig.start("a")
    job_id = await rig.job(["x"])
    queue = rig.job_type.queue("a")
    await rig.broker.publish(queue, b"not json")
    await rig.publish(rig.message(job_id, "b", "y"), stage="a")
    await rig.publish(ItemMessage(job_id, "other", "a", "z"), stage="a")
    await rig.publish(rig.message("no-such-job", "a", "w"))
    await rig.settled()
    dead = rig.broker.dead_letters[f"{queue}.dead"]
    assert dead[0].body == b"not json"
    assert dead[0].reason.startswith("malformed item message")
    assert [d.reason for d in dead[1:3]] == [
        "a 't' 'b' message on the queue of 't' 'a'",
        "a 'other' 'a' message on the queue of 't' 'a'",
    ]
    assert decode_item(dead[3].body).job_id == "no-such-job"
    assert "no-such-job" in dead[3].reason
    assert len(dead) == 4
    assert await rig.counts(job_id, "a") == (1, 1, 0, True)


async def test_an_item_of_an_ended_job_is_acked_without_work(rig: Rig) -> None:
    runs: list[str] = []

    @rig.job_type.handler("a")
    async def work(item: Item) -> None:
        runs.append(item.key)

    job = await rig.store.create_job("t", rig.job_type.stages)
    await rig.store.add_items(job.id, "a", [LedgerItem("x")], seal=True)
    await rig.store.end_job(job.id, JobStatus.CANCELLED)
    await rig.start("a")
    await rig.publish(rig.message(job.id, "a", "x"))
    await rig.settled()
    assert runs == []
    assert rig.broker.dead_letters == {}
    assert await rig.counts(job.id, "a") == (1, 0, 0, True)


async def test_added_work_the_ledger_refuses_fails_the_item_with_the_reason(rig: Rig) -> None:
    @rig.job_type.handler("a", feeds=["b"])
    async def work(item: Item) -> None:
        item.add("b", "fine")
        item.add("b", "huge", "x" * 70_000)

    await rig.start("a")
    job_id = await rig.job(["x"])
    await rig.settled()
    assert await rig.counts(job_id, "a") == (1, 0, 1, True)
    assert await rig.counts(job_id, "b") == (0, 0, 0, True)  # its feeder completed
    [failure] = await rig.store.list_failures(job_id)
    assert failure.error.startswith("adding to a later stage: InvalidRequest: an item payload")
    assert await rig.broker.in_flight(rig.job_type.queue("b")) == 0


async def test_the_sealer_checks_a_busy_job_once_per_interval_and_after_the_last_poke() -> None:
    store = RecordingStore()
    job_type = JobType("crawl", ["pages", "links"])
    job_type.handler("pages", feeds=["links"])(lambda item: None)
    job = await store.create_job("crawl", job_type.stages)
    await store.add_items(job.id, "pages", [LedgerItem("p")], seal=True)
    sealer = Sealer(store, interval=0.5)
    for _ in range(100):
        sealer.poke(job_type, job.id)
        await asyncio.sleep(0)  # the first check runs, the others come within the interval
    await sealer.drain()
    assert sealer.checks == 2  # the first poke's, then one for the 99 that came meanwhile
    assert store.seals == []
    await store.add_progress([StageProgress(job.id, "pages", completed_keys=["p"])])
    sealer.poke(job_type, job.id)
    await sealer.drain()
    assert sealer.checks == 3
    assert [stage for stage, _ in store.seals] == ["links"]


def test_the_worker_names_its_stages_by_type_and_stage() -> None:
    settings = Settings.from_env(
        {},
        store_url="postgresql://127.0.0.1/x",
        broker_url="amqp://127.0.0.1/",
        data_dir=Path("/nowhere"),
    )
    first, second = JobType("one", ["fetch", "load"]), JobType("two", ["fetch"])
    for job_type in (first, second):
        for stage in job_type.stages:
            job_type.handler(stage)(lambda item: None)
    app = App(settings, job_types=[first, second])
    assert Worker(app=app).queues == [
        "jobtrack.one.fetch",
        "jobtrack.one.load",
        "jobtrack.two.fetch",
    ]
    assert Worker(app=app, stages=["load", "two.fetch"]).queues == [
        "jobtrack.one.load",
        "jobtrack.two.fetch",
    ]
    with pytest.raises(InvalidRequest, match=r"ambiguous: name it as 'one\.fetch', 'two\.fetch'"):
        Worker(app=app, stages=["fetch"])
    with pytest.raises(InvalidRequest, match="unknown stage 'thumbnail'"):
        Worker(app=app, stages=["thumbnail"])
    assert Worker(settings).queues == ["jobtrack.thumbnail", "jobtrack.cache"]
    bare = App(settings, job_types=[JobType("collection-scan", ["scan", "thumbnail", "cache"])])
    with pytest.raises(InvalidRequest, match="nothing to work on"):
        Worker(app=bare)  # no special case: a type without handlers has nothing to consume
    builtin = App(settings, job_types=[collection_scan_type()])
    assert Worker(app=builtin, stages=["cache"]).queues == ["jobtrack.cache"]


@dataclass
class HandedBack:
    """A delivery the broker has handed out ``delivery_count`` times."""

    body: bytes
    delivery_count: int
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nack(self, *, requeue: bool, reason: str = "") -> None:
        self.settled.append(f"nack requeue={requeue} {reason}")

    async def retry(self, body: bytes) -> None:
        self.settled.append(f"retry {decode_item(body).attempt}")


async def test_messages_handed_back_by_stopping_workers_keep_their_attempts(rig: Rig) -> None:
    rig.job_type = JobType("t", ["a"], retry_on=(TimeoutError,), max_attempts=3, backoff=0.0)
    tries: list[int] = []

    @rig.job_type.handler("a")
    def work(item: Item) -> None:
        tries.append(item.attempt)
        raise TimeoutError("flaky")

    await rig.start()
    job = await rig.store.create_job("t", ["a"])
    await rig.store.add_items(job.id, "a", [LedgerItem("x"), LedgerItem("y")], seal=True)
    consumer = rig.consumers["a"]
    # Handed back by 4 stopping workers before its first real try: still try 1 of 3.
    restarted = HandedBack(encode_item(rig.message(job.id, "a", "x")), delivery_count=5)
    await consumer.handle(restarted)
    assert (tries, restarted.settled) == ([1], ["retry 2"])
    # Delivered past the allowance without a retry ever republishing it: workers died
    # on it every time, so this try is its last, and the item fails.
    looping = HandedBack(
        encode_item(rig.message(job.id, "a", "y")), delivery_count=2 + CRASH_ALLOWANCE
    )
    await consumer.handle(looping)
    assert (tries, looping.settled) == ([1, 3], ["ack"])
    [failure] = await rig.store.list_failures(job.id)
    assert (failure.key, failure.attempts) == ("y", 3)
