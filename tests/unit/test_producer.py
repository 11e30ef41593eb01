"""Producing a job on the in-memory store and broker: ledger and totals per
batch, one message per item, seal rules, cancel on error, the synchronous
producer from plain code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jobtrack.broker import InMemoryBroker
from jobtrack.errors import Conflict, InvalidRequest
from jobtrack.jobs.messages import ItemMessage, decode_item
from jobtrack.jobs.producer import JobProducer
from jobtrack.jobs.types import Item, JobType
from jobtrack.model import JobStatus
from jobtrack.runtime import App, Settings
from jobtrack.store import InMemoryJobStore
from jobtrack.store.ledger import LedgerItem

T = TypeVar("T")


class CountingStore(InMemoryJobStore):
    """The in-memory store, recording each ``add_items`` call's size."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def add_items(
        self, job_id: str, stage: str, items: Sequence[LedgerItem], *, seal: bool = False
    ) -> int:
        self.batches.append(len(items))
        return await super().add_items(job_id, stage, items, seal=seal)


def imports() -> JobType:
    """parse (fed by the producer) → write (fed by parse) → report (fed by the producer)."""
    job_type = JobType("imports", ["parse", "write", "report"])

    @job_type.handler("parse", feeds=["write"])
    def parse(item: Item) -> None: ...

    @job_type.handler("write")
    def write(item: Item) -> None: ...

    @job_type.handler("report")
    def report(item: Item) -> None: ...

    return job_type


def drain(broker: InMemoryBroker, queue: str) -> list[ItemMessage]:
    """Take every message the queue holds, decoded, in order."""
    ready = broker.queue(queue).ready
    messages = []
    while not ready.empty():
        messages.append(decode_item(ready.get_nowait().body))
    return messages


@pytest.fixture
def job_type() -> JobType:
    return imports()


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


def producer(
    store: InMemoryJobStore, broker: InMemoryBroker, job_type: JobType, **options: Any
) -> JobProducer:
    return JobProducer(store, broker, job_type, attributes={"file": "a.csv"}, **options)


async def test_each_batch_is_written_then_published_one_message_an_item(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    async with producer(store, broker, job_type) as feeding:
        assert feeding.job.attributes == {"file": "a.csv"}
        assert feeding.job.job_type == "imports"
        new = await feeding.add("parse", (f"k{n:05}" for n in range(2_500)))
        assert new == 2_500
        assert store.batches == [1_000, 1_000, 500]
        job = await store.get_job(feeding.job.id)
        assert job.stages["parse"].total_items == 2_500
        assert not job.stages["parse"].total_final
    messages = drain(broker, job_type.queue("parse"))
    assert [m.key for m in messages] == [f"k{n:05}" for n in range(2_500)]
    assert {(m.job_id, m.job_type, m.stage, m.attempt) for m in messages} == {
        (feeding.job.id, "imports", "parse", 1)
    }
    assert feeding.added == 2_500
    assert feeding.published == 2_500


async def test_the_total_is_raised_batch_by_batch_before_its_messages(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    """When a batch's messages are on the queue, the total counts that batch,
    and at most the next one (whose ledger write overlaps the publish)."""
    queue = job_type.queue("parse")
    seen: list[tuple[int, int]] = []

    class Watching(InMemoryBroker):
        async def publish_many(self, queue_name: str, bodies: object) -> None:
            job = await store.get_job(feeding.job.id)
            listed = list(bodies)  # type: ignore[call-overload]
            seen.append((job.stages["parse"].total_items, len(listed)))
            await super().publish_many(queue_name, listed)

    watching = Watching()
    feeding = producer(store, watching, job_type, batch_size=3)
    async with feeding:
        await feeding.add("parse", [f"k{n}" for n in range(7)])
    assert [size for _, size in seen] == [3, 3, 1]
    written = [3, 6, 7]
    for n, (total, _) in enumerate(seen):
        assert written[n] <= total <= written[min(n + 1, 2)]
    assert len(drain(watching, queue)) == 7


async def test_items_as_ledger_items_pairs_or_keys_keep_their_payloads(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    async with producer(store, broker, job_type) as feeding:
        await feeding.add("parse", [LedgerItem("a", {"row": 1}), ("b", [2, 3]), "c"])
    assert [(m.key, m.payload) for m in drain(broker, job_type.queue("parse"))] == [
        ("a", {"row": 1}),
        ("b", [2, 3]),
        ("c", None),
    ]
    items = await store.ledger_items(feeding.job.id, "parse", ["a", "b", "c"])
    assert items == [LedgerItem("a", {"row": 1}), LedgerItem("b", [2, 3]), LedgerItem("c")]
    with pytest.raises(InvalidRequest, match="an item is"):
        async with producer(store, broker, job_type) as other:
            await other.add("parse", [42])  # type: ignore[list-item]


async def test_a_key_added_again_adds_nothing_to_the_total(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    async with producer(store, broker, job_type) as feeding:
        assert await feeding.add("parse", ["a", "b", "c"]) == 3
        assert await feeding.add("parse", ["b", "c", "d"]) == 1
        assert await feeding.add("parse", ["e", "e", "a"]) == 1  # twice in a batch: once
    job = feeding.job
    assert job.stages["parse"].total_items == 5
    assert job.stages["parse"].total_final
    # Every item of every batch is published: a batch added again after a
    # crash between its write and its publish loses nothing.
    assert [m.key for m in drain(broker, job_type.queue("parse"))] == [
        *"abc",
        *"bcd",
        *"ea",
    ]
    assert feeding.added == 5


async def test_leaving_the_block_seals_the_producers_stages_and_ready_discovered_ones(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    async with producer(store, broker, job_type) as feeding:
        await feeding.add("report", ["r1"])
    stages = feeding.job.stages
    # parse got nothing: sealed at 0, complete, so write (fed by it alone) seals at once.
    assert (stages["parse"].total_items, stages["parse"].total_final) == (0, True)
    assert stages["parse"].status.terminal
    assert (stages["write"].total_items, stages["write"].total_final) == (0, True)
    assert (stages["report"].total_items, stages["report"].total_final) == (1, True)
    assert feeding.sealed
    assert feeding.job == await store.get_job(feeding.job.id)


async def test_a_discovered_stage_fed_by_a_stage_with_items_waits_for_it(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    async with producer(store, broker, job_type) as feeding:
        await feeding.add("parse", ["a"])
    stages = feeding.job.stages
    assert stages["parse"].total_final
    assert stages["report"].total_final
    assert not stages["write"].total_final
    assert feeding.job.status is JobStatus.IN_PROGRESS  # report, empty, completed


async def test_the_producer_refuses_discovered_and_unknown_stages_and_adding_after_seal(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    async with producer(store, broker, job_type) as feeding:
        with pytest.raises(InvalidRequest, match="fed by the handlers of parse"):
            await feeding.add("write", ["a"])
        with pytest.raises(InvalidRequest, match="no stage 'nope'"):
            await feeding.add("nope", ["a"])
        await feeding.seal()
        with pytest.raises(InvalidRequest, match="is sealed"):
            await feeding.add("parse", ["a"])
        await feeding.seal()  # again: nothing more
    assert store.batches == []
    assert drain(broker, job_type.queue("write")) == []
    assert feeding.job.status is not JobStatus.CANCELLED
    with pytest.raises(InvalidRequest, match="use `async with`"):
        _ = producer(store, broker, job_type).job


async def test_an_error_in_the_block_cancels_the_job_and_propagates(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    feeding = producer(store, broker, job_type)

    async def fail() -> None:
        async with feeding:
            await feeding.add("parse", ["a", "b"])
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        await fail()
    job = await store.get_job(feeding.job.id)
    assert job.status is JobStatus.CANCELLED
    assert job.message == "the producer failed: RuntimeError('disk full')"
    assert not job.stages["parse"].total_final
    assert feeding.job == job


async def test_a_cancelled_producer_body_cancels_the_job(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    entered = asyncio.Event()

    async def produce() -> None:
        async with producer(store, broker, job_type) as feeding:
            holder.append(feeding)
            entered.set()
            await asyncio.Event().wait()

    holder: list[JobProducer] = []
    task = asyncio.create_task(produce())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    job = await store.get_job(holder[0].job.id)
    assert job.status is JobStatus.CANCELLED


async def test_a_bad_item_stops_the_add_after_the_batches_written(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    with pytest.raises(InvalidRequest):
        async with producer(store, broker, job_type, batch_size=2) as feeding:
            await feeding.add("parse", ["a", "b", "c", "bad\x00key"])
    job = await store.get_job(feeding.job.id)
    assert job.stages["parse"].total_items == 2
    assert [m.key for m in drain(broker, job_type.queue("parse"))] == ["a", "b"]
    assert job.status is JobStatus.CANCELLED


async def test_an_item_refused_while_a_batch_is_published_lets_that_batch_out(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    # The refusal comes from reading the items, while the batch before it is
    # still being published: that batch is published in full, then the error.
    with pytest.raises(InvalidRequest, match="an item is"):
        async with producer(store, broker, job_type, batch_size=2) as feeding:
            await feeding.add("parse", ["a", "b", "c", 42])  # type: ignore[list-item]
    job = await store.get_job(feeding.job.id)
    assert job.stages["parse"].total_items == 2
    assert [m.key for m in drain(broker, job_type.queue("parse"))] == ["a", "b"]
    assert (feeding.added, feeding.published) == (2, 2)
    assert job.status is JobStatus.CANCELLED


def test_the_batch_size_is_bounded(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    for size in (0, 1_001):
        with pytest.raises(InvalidRequest, match="batch_size"):
            producer(store, broker, job_type, batch_size=size)


# The app's producers.


def memory_app(tmp_path: Path) -> App:
    return App(Settings(data_dir=tmp_path, store_url="memory://"), job_types=[imports()])


async def test_the_app_starts_a_job_of_a_registered_type_on_its_broker(tmp_path: Path) -> None:
    async with memory_app(tmp_path) as app:
        async with app.start_job("imports", attributes={"n": 1}) as feeding:
            await feeding.add("parse", ["a", "b"])
        assert isinstance(app.broker, InMemoryBroker)
        assert len(drain(app.broker, "jobtrack.imports.parse")) == 2
        job = await app.store.get_job(feeding.job.id)
        assert job.attributes == {"n": 1}
        assert job.stages["parse"].total_items == 2
        with pytest.raises(InvalidRequest, match="unknown job type 'other'"):
            app.start_job("other")
        given = JobType("given", ["only"])
        with pytest.raises(InvalidRequest, match=r"no handler for \['only'\]"):
            await app.start_job(given).__aenter__()
        given.handler("only")(_nothing)
        async with app.start_job(given) as other:
            await other.add("only", ["x"])
        assert other.job.stages["only"].total_final


def _nothing(item: Item) -> None:
    """A handler that does nothing."""


async def test_a_pausing_producer_beats_so_the_monitor_leaves_its_job_alone(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    async with producer(store, broker, job_type, heartbeat=0.02) as feeding:
        await feeding.add("parse", ["a"])
        before = (await store.get_job(feeding.job.id)).seq
        await asyncio.sleep(0.15)  # a pause between batches, longer than several beats
        job = await store.get_job(feeding.job.id)
        assert job.seq > before
        assert job.stages["parse"].message == "adding items: 1 so far"
        await feeding.add("parse", ["b"])
    assert feeding.job.stages["parse"].total_items == 2
    assert feeding.job.stages["parse"].total_final
    seq = (await store.get_job(feeding.job.id)).seq
    await asyncio.sleep(0.1)  # sealed: no more beats
    assert (await store.get_job(feeding.job.id)).seq == seq


async def test_a_job_ended_under_its_producer_refuses_more_items_and_the_seal(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    feeding = producer(store, broker, job_type, heartbeat=0.02)
    await feeding.start()
    await feeding.add("parse", ["a"])
    await store.end_job(feeding.job.id, JobStatus.FAILED, message="stuck")
    await _until_noticed(feeding)
    assert feeding.ended is JobStatus.FAILED
    with pytest.raises(Conflict, match="has ended \\(failed\\)"):
        await feeding.add("parse", ["b"])
    with pytest.raises(Conflict, match="has ended \\(failed\\)"):
        await feeding.seal()
    assert drain(broker, "jobtrack.imports.parse") == [
        ItemMessage(feeding.job.id, "imports", "parse", "a")
    ]
    job = await store.get_job(feeding.job.id)
    assert (job.status, job.stages["parse"].total_items) == (JobStatus.FAILED, 1)
    assert not job.stages["parse"].total_final


async def _until_noticed(feeding: JobProducer) -> None:
    async with asyncio.timeout(10):
        while feeding.ended is None:  # noqa: ASYNC110 (a beat of the producer's own)
            await asyncio.sleep(0.01)


async def test_a_job_ended_before_the_seal_makes_the_seal_raise(
    store: CountingStore, broker: InMemoryBroker, job_type: JobType
) -> None:
    feeding = producer(store, broker, job_type)  # no beat comes within the test
    await feeding.start()
    await feeding.add("parse", ["a"])
    await store.end_job(feeding.job.id, JobStatus.CANCELLED)
    with pytest.raises(Conflict, match="has ended \\(cancelled\\)"):
        await feeding.__aexit__(None, None, None)
    job = await store.get_job(feeding.job.id)
    assert not job.stages["parse"].total_final


@pytest.fixture
def open_app(tmp_path: Path) -> Iterator[tuple[App, asyncio.AbstractEventLoop]]:
    """An app open on an event loop running in another thread."""
    app = memory_app(tmp_path)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(app.__aenter__(), loop).result(5)
    yield app, loop
    asyncio.run_coroutine_threadsafe(app.aclose(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(5)


def test_the_sync_producer_runs_on_the_open_apps_loop_from_plain_code(
    open_app: tuple[App, asyncio.AbstractEventLoop],
) -> None:
    app, loop = open_app
    with app.start_job_sync("imports", attributes={"from": "sync"}) as feeding:
        assert feeding.add("parse", [("a", 1), ("b", 2)]) == 2
        assert feeding.add("report", ["r"]) == 1
    job = feeding.job
    assert job.stages["parse"].total_final
    assert job.stages["parse"].total_items == 2
    assert job.attributes == {"from": "sync"}

    async def read() -> tuple[object, list[ItemMessage]]:
        assert isinstance(app.broker, InMemoryBroker)
        return await app.store.get_job(job.id), drain(app.broker, "jobtrack.imports.parse")

    stored, messages = on(loop, read())
    assert stored == job
    assert [(m.key, m.payload) for m in messages] == [("a", 1), ("b", 2)]


def test_the_sync_producer_cancels_on_error(
    open_app: tuple[App, asyncio.AbstractEventLoop],
) -> None:
    app, loop = open_app
    feeding = app.start_job_sync("imports")

    def fail() -> None:
        with feeding:
            feeding.add("parse", ["a"])
            raise KeyError("x")

    with pytest.raises(KeyError):
        fail()
    stored = on(loop, app.store.get_job(feeding.job.id))
    assert stored.status is JobStatus.CANCELLED
    with app.start_job_sync("imports") as sync:
        sealed = sync.seal()
        with pytest.raises(InvalidRequest, match="is sealed"):
            sync.add("parse", ["b"])
    assert sealed.stages["parse"].total_final


async def test_the_sync_producer_refuses_the_apps_own_loop(tmp_path: Path) -> None:
    async with memory_app(tmp_path) as app:
        with pytest.raises(InvalidRequest, match="would block"):
            app.start_job_sync("imports").__enter__()


def test_the_sync_producer_refuses_a_closed_app_held_in_memory(tmp_path: Path) -> None:
    app = memory_app(tmp_path)
    with pytest.raises(InvalidRequest, match="a store in memory"):
        app.start_job_sync("imports").__enter__()
    sqlite = App(
        Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'j.db'}"),
        job_types=[imports()],
    )
    with pytest.raises(InvalidRequest, match="a broker in memory"):
        sqlite.start_job_sync("imports").__enter__()


def test_the_sync_producer_reads_items_a_batch_at_a_time(
    open_app: tuple[App, asyncio.AbstractEventLoop],
) -> None:
    app, loop = open_app

    def rows() -> Iterator[str]:
        yield from (f"r{n:04}" for n in range(1_000))
        raise ValueError("the source broke after one batch")

    with pytest.raises(ValueError, match="broke"), app.start_job_sync("imports") as feeding:
        feeding.add("parse", rows())
    job = on(loop, app.store.get_job(feeding.job.id))
    assert job.status is JobStatus.CANCELLED
    assert job.stages["parse"].total_items == 1_000  # the batch read before the error
