"""The item ledger's contract: the same bodies against every backend."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from jobtrack.errors import InvalidRequest, JobNotFound, StageNotFound
from jobtrack.model import JobStatus, StageStatus
from jobtrack.store import ChangeCursor, JobStore, SqliteJobStore, StageProgress
from jobtrack.store.ledger import (
    MAX_LEDGER_BATCH,
    MAX_PAYLOAD_BYTES,
    LedgerItem,
    LedgerTally,
)
from tests.conftest import SteppingClock

STAGES = ("fetch", "parse")


def items(*keys: str) -> list[LedgerItem]:
    """Items with these keys, each with a payload naming its key."""
    return [LedgerItem(key, {"key": key}) for key in keys]


async def new_job(store: JobStore) -> str:
    return (await store.create_job("ledger", STAGES)).id


async def test_adding_raises_the_total_by_the_new_items_only(store: JobStore) -> None:
    job_id = await new_job(store)
    assert await store.add_items(job_id, "fetch", items("a", "b", "c")) == 3
    assert await store.add_items(job_id, "fetch", items("b", "c", "d", "e")) == 2
    stage = (await store.get_job(job_id)).stages["fetch"]
    assert (stage.total_items, stage.total_final) == (5, False)
    assert (await store.get_job(job_id)).stages["parse"].total_items == 0
    assert await store.tally_ledger(job_id) == {"fetch": LedgerTally(5, 0, 0)}


async def test_adding_the_same_batch_again_adds_nothing(store: JobStore) -> None:
    job_id = await new_job(store)
    batch = items(*(f"k{i:03}" for i in range(100)))
    assert await store.add_items(job_id, "fetch", batch) == 100
    seq = (await store.get_job(job_id)).seq
    assert await store.add_items(job_id, "fetch", batch) == 0
    job = await store.get_job(job_id)
    assert job.stages["fetch"].total_items == 100
    assert job.seq == seq  # nothing new, nothing written


async def test_seal_with_the_last_batch(store: JobStore) -> None:
    job_id = await new_job(store)
    assert await store.add_items(job_id, "fetch", items("a", "b")) == 2
    assert await store.add_items(job_id, "fetch", items("c"), seal=True) == 1
    stage = (await store.get_job(job_id)).stages["fetch"]
    assert (stage.total_items, stage.total_final) == (3, True)
    # Sealing with an empty batch, and the same items again, are accepted.
    assert await store.add_items(job_id, "fetch", [], seal=True) == 0
    assert await store.add_items(job_id, "fetch", items("a", "c"), seal=True) == 0
    assert (await store.get_job(job_id)).stages["fetch"].total_items == 3


async def test_an_empty_sealed_batch_seals_an_empty_stage(store: JobStore) -> None:
    job_id = await new_job(store)
    assert await store.add_items(job_id, "parse", [], seal=True) == 0
    stage = (await store.get_job(job_id)).stages["parse"]
    assert (stage.total_items, stage.total_final, stage.status) == (0, True, StageStatus.COMPLETED)


async def test_a_sealed_stage_refuses_new_items_and_writes_nothing(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a", "b"), seal=True)
    before = await store.get_job(job_id)
    with pytest.raises(InvalidRequest, match="sealed"):
        await store.add_items(job_id, "fetch", items("a", "z"))
    after = await store.get_job(job_id)
    assert after.stages["fetch"].total_items == 2
    assert after.seq == before.seq
    assert await store.tally_ledger(job_id) == {"fetch": LedgerTally(2, 0, 0)}
    assert [item.key for item in await store.missing_items(job_id, "fetch")] == ["a", "b"]
    assert await store.ledger_items(job_id, "fetch", ["z"]) == []


async def test_a_stage_sealed_by_seal_total_refuses_new_items(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.seal_total(job_id, "fetch", total=0)
    with pytest.raises(InvalidRequest, match="sealed"):
        await store.add_items(job_id, "fetch", items("a"))
    assert await store.tally_ledger(job_id) == {}


async def test_missing_items_are_the_ones_not_counted(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a", "b", "c", "d", "e"), seal=True)
    await store.increment(job_id, "fetch", item_key="b")
    await store.increment(job_id, "fetch", failed=1, item_key="d")
    await store.add_progress(
        [StageProgress(job_id, "fetch", completed_keys=["a", "x"], failed_keys=[])]
    )
    missing = await store.missing_items(job_id, "fetch")
    assert missing == [LedgerItem("c", {"key": "c"}), LedgerItem("e", {"key": "e"})]
    # A key counted but not in the ledger ("x") is no ledger item.
    assert await store.tally_ledger(job_id) == {"fetch": LedgerTally(5, 3, 0)}
    assert await store.missing_items(job_id, "parse") == []


async def test_missing_items_page_by_key_in_code_point_order(store: JobStore) -> None:
    job_id = await new_job(store)
    keys = ["b", "a", "B", "é", "z", "aa", "~", "Z", "日本", "😀", "a b", "a-b", "_"]
    await store.add_items(job_id, "fetch", items(*keys))
    await store.increment(job_id, "fetch", item_key="z")
    expected = sorted(key for key in keys if key != "z")
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = await store.missing_items(job_id, "fetch", after=after, limit=5)
        if not page:
            break
        pages.append([item.key for item in page])
        after = page[-1].key
    assert pages == [expected[0:5], expected[5:10], expected[10:]]
    assert [i.key for i in await store.missing_items(job_id, "fetch", after="a")] == expected[4:]
    assert await store.missing_items(job_id, "fetch", limit=0) == []


async def test_tally_counts_items_counted_and_failed_per_stage(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a", "b", "c", "d"))
    await store.add_items(job_id, "parse", items("a", "b"))
    await store.add_progress(
        [
            StageProgress(job_id, "fetch", completed_keys=["a"], failed_keys=["b", "c"]),
            StageProgress(job_id, "parse", completed_keys=["b"]),
        ]
    )
    await store.record_failure(job_id, "fetch", "b", "boom")
    await store.record_failure(job_id, "fetch", "c", "boom")
    await store.record_failure(job_id, "fetch", "d", "failed, not yet counted")
    assert await store.tally_ledger(job_id) == {
        "fetch": LedgerTally(items=4, counted=3, failed=2),
        "parse": LedgerTally(items=2, counted=1, failed=0),
    }
    assert (await store.tally_ledger(job_id))["fetch"].missing == 1


async def test_record_failure_replaces_the_last_one(store: JobStore, clock: SteppingClock) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a"))
    await store.record_failure(job_id, "fetch", "a", "first")
    clock.advance(5)
    await store.record_failure(job_id, "fetch", "a", "second", attempts=3)
    [failure] = await store.list_failures(job_id)
    assert (failure.stage, failure.key, failure.error, failure.attempts) == (
        "fetch",
        "a",
        "second",
        3,
    )
    assert failure.payload == {"key": "a"}
    assert clock.now - timedelta(seconds=1) < failure.failed_at <= clock.now


async def test_failure_errors_are_cut_and_made_storable(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.record_failure(job_id, "fetch", "a", "x" * 5000)
    await store.record_failure(job_id, "fetch", "b", "nul\x00here \ud800")
    errors = {f.key: f.error for f in await store.list_failures(job_id)}
    assert errors == {"a": "x" * 2000, "b": "nul\ufffdhere ?"}


async def test_list_failures_with_payloads_in_order_and_pages(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a", "b", "c"))
    await store.add_items(job_id, "parse", [LedgerItem("a", [1, "two"])])
    for stage, key in [("parse", "a"), ("fetch", "c"), ("fetch", "a"), ("fetch", "zz")]:
        await store.record_failure(job_id, stage, key, f"{stage}/{key} failed")
    failures = await store.list_failures(job_id)
    assert [(f.stage, f.key, f.error, f.payload) for f in failures] == [
        ("fetch", "a", "fetch/a failed", {"key": "a"}),
        ("fetch", "c", "fetch/c failed", {"key": "c"}),
        ("fetch", "zz", "fetch/zz failed", None),  # not in the ledger
        ("parse", "a", "parse/a failed", [1, "two"]),
    ]
    first = await store.list_failures(job_id, limit=2)
    assert [(f.stage, f.key) for f in first] == [("fetch", "a"), ("fetch", "c")]
    rest = await store.list_failures(job_id, after=("fetch", "c"), limit=2)
    assert [(f.stage, f.key) for f in rest] == [("fetch", "zz"), ("parse", "a")]
    assert await store.list_failures(job_id, after=("parse", "a")) == []
    parse = await store.list_failures(job_id, stage="parse")
    assert [(f.stage, f.key) for f in parse] == [("parse", "a")]
    assert await store.list_failures(job_id, stage="nope") == []


async def test_ledger_items_by_key(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("c", "a", "b"))
    found = await store.ledger_items(job_id, "fetch", ["b", "zz", "a", "b"])
    assert found == [LedgerItem("a", {"key": "a"}), LedgerItem("b", {"key": "b"})]
    assert await store.ledger_items(job_id, "fetch", []) == []
    assert await store.ledger_items(job_id, "parse", ["a"]) == []
    assert await store.ledger_items(job_id, "fetch", ["\x00"]) == []


async def test_purge_removes_only_jobs_ended_before_the_cutoff(
    store: JobStore, clock: SteppingClock
) -> None:
    old_active = await new_job(store)
    old_ended = await new_job(store)
    for job_id in (old_active, old_ended):
        await store.add_items(job_id, "fetch", items("a", "b"))
        await store.record_failure(job_id, "fetch", "a", "boom")
    await store.end_job(old_ended, JobStatus.CANCELLED)
    clock.advance(3600)
    cutoff = clock.now
    clock.advance(3600)
    recent = await new_job(store)
    await store.add_items(recent, "fetch", items("a"))
    await store.end_job(recent, JobStatus.FAILED)

    assert await store.purge_ledger(ended_before=cutoff) == 1
    assert await store.tally_ledger(old_ended) == {}
    assert await store.list_failures(old_ended) == []
    assert await store.tally_ledger(old_active) == {"fetch": LedgerTally(2, 0, 0)}
    assert len(await store.list_failures(old_active)) == 1
    assert await store.tally_ledger(recent) == {"fetch": LedgerTally(1, 0, 0)}
    assert await store.purge_ledger(ended_before=cutoff) == 0
    # The jobs themselves stay.
    assert (await store.get_job(old_ended)).status is JobStatus.CANCELLED


async def test_purge_takes_at_most_limit_jobs_a_call(store: JobStore, clock: SteppingClock) -> None:
    ended = []
    for _ in range(3):
        job_id = await new_job(store)
        await store.add_items(job_id, "fetch", items("a"))
        await store.end_job(job_id, JobStatus.COMPLETED)
        ended.append(job_id)
    clock.advance(10)
    assert await store.purge_ledger(ended_before=clock.now, limit=2) == 2
    assert await store.purge_ledger(ended_before=clock.now, limit=2) == 1
    assert await store.purge_ledger(ended_before=clock.now, limit=2) == 0
    for job_id in ended:
        assert await store.tally_ledger(job_id) == {}


async def test_a_job_that_completes_keeps_its_ledger(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a"), seal=True)
    await store.add_items(job_id, "parse", [], seal=True)
    await store.increment(job_id, "fetch", item_key="a")
    assert (await store.get_job(job_id)).status is JobStatus.COMPLETED
    # The counted keys went with the end; the ledger stays until purged.
    assert await store.tally_ledger(job_id) == {"fetch": LedgerTally(1, 0, 0)}
    assert await store.ledger_items(job_id, "fetch", ["a"]) == [LedgerItem("a", {"key": "a"})]


async def test_unknown_jobs_and_stages(store: JobStore) -> None:
    job_id = await new_job(store)
    with pytest.raises(JobNotFound):
        await store.add_items("nope", "fetch", items("a"))
    with pytest.raises(StageNotFound):
        await store.add_items(job_id, "nope", items("a"))
    with pytest.raises(JobNotFound):
        await store.tally_ledger("nope")
    with pytest.raises(JobNotFound):
        await store.missing_items("nope", "fetch")
    with pytest.raises(StageNotFound):
        await store.missing_items(job_id, "nope")
    with pytest.raises(JobNotFound):
        await store.ledger_items("nope", "fetch", ["a"])
    with pytest.raises(JobNotFound):
        await store.record_failure("nope", "fetch", "a", "boom")
    with pytest.raises(StageNotFound):
        await store.record_failure(job_id, "nope", "a", "boom")
    with pytest.raises(JobNotFound):
        await store.list_failures("nope")
    assert await store.tally_ledger(job_id) == {}
    assert await store.list_failures(job_id) == []


def _circular() -> list[LedgerItem]:
    loop: list[Any] = []
    loop.append(loop)
    return [LedgerItem("ok", 1), LedgerItem("loop", loop)]


def _too_large() -> list[LedgerItem]:
    return [LedgerItem("ok", 1), LedgerItem("big", "x" * MAX_PAYLOAD_BYTES)]


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        (items("a", "b", "a"), "twice"),
        (items("a", "b\x00c"), "NUL"),
        (items("a", ""), "empty"),
        (items("a", "x" * 1001), "exceed"),
        (items("a", "\udc00"), "surrogate"),
        ([LedgerItem("a", 1), LedgerItem("b", {1, 2})], "JSON"),
        ([LedgerItem("a", 1), LedgerItem("b", float("nan"))], "JSON"),
        ([LedgerItem("a", "nul\x00")], "NUL"),
        (_too_large(), "exceed"),
        (_circular(), "JSON"),
        (items(*(f"k{i}" for i in range(MAX_LEDGER_BATCH + 1))), "at most"),
    ],
    ids=[
        "duplicate",
        "nul-key",
        "empty-key",
        "long-key",
        "surrogate",
        "set",
        "nan",
        "nul-payload",
        "large-payload",
        "circular",
        "too-many",
    ],
)
async def test_bad_batches_are_refused_with_nothing_written(
    store: JobStore, batch: list[LedgerItem], reason: str
) -> None:
    job_id = await new_job(store)
    before = await store.get_job(job_id)
    with pytest.raises(InvalidRequest, match=reason):
        await store.add_items(job_id, "fetch", batch, seal=True)
    after = await store.get_job(job_id)
    assert after.seq == before.seq
    assert after.stages["fetch"] == before.stages["fetch"]
    assert await store.tally_ledger(job_id) == {}


async def test_a_full_batch_is_taken(store: JobStore) -> None:
    job_id = await new_job(store)
    batch = [LedgerItem(f"k{i:05}", i) for i in range(MAX_LEDGER_BATCH)]
    assert await store.add_items(job_id, "fetch", batch) == MAX_LEDGER_BATCH
    assert (await store.get_job(job_id)).stages["fetch"].total_items == MAX_LEDGER_BATCH
    page = await store.missing_items(job_id, "fetch", after="k09990")
    assert page == [LedgerItem(f"k{i:05}", i) for i in range(9991, MAX_LEDGER_BATCH)]


PAYLOADS: list[Any] = [
    None,
    True,
    False,
    0,
    -17,
    2**53,
    3.25,
    -0.5,
    "",
    "plain",
    'quote " backslash \\ tab \t newline \n',
    "é 日本 😀 \u2028",
    "a backslash and u0000, no NUL: \\u0000",
    [],
    [1, "two", None, [3.5, {"four": 4}]],
    {},
    {"path": "/a/b c.jpg", "size": 1234, "tags": ["x", "y"], "nested": {"k": None}},
    {"unicode key é": "value", "": "empty key"},
    "x" * (MAX_PAYLOAD_BYTES - 2),  # the largest string payload: two quotes
]


async def test_payloads_round_trip_as_json_values(store: JobStore) -> None:
    job_id = await new_job(store)
    batch = [LedgerItem(f"p{i:02}", payload) for i, payload in enumerate(PAYLOADS)]
    assert await store.add_items(job_id, "fetch", batch) == len(PAYLOADS)
    missing = await store.missing_items(job_id, "fetch")
    assert missing == batch
    assert [type(item.payload) for item in missing] == [type(p) for p in PAYLOADS]
    found = await store.ledger_items(job_id, "fetch", [item.key for item in batch])
    assert found == batch


async def test_floats_in_exponent_form_come_back_equal(store: JobStore) -> None:
    # PostgreSQL's jsonb keeps numbers as numerics: 1e16 comes back as the
    # int 10000000000000000, equal to the float but not of its type.
    payload = {"big": 1e16, "small": 1.5e-7, "negative": -2.5e-300}
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", [LedgerItem("f", payload)])
    assert await store.ledger_items(job_id, "fetch", ["f"]) == [LedgerItem("f", payload)]


async def test_adding_items_is_a_job_write_the_change_feed_sees(store: JobStore) -> None:
    job_id = await new_job(store)
    cursor = await store.last_change()
    assert await store.add_items(job_id, "fetch", items("a", "b")) == 2
    [changed], cursor = await store.list_changed(after=cursor)
    assert changed.id == job_id
    assert changed.stages["fetch"].total_items == 2
    assert (await store.list_changed(after=cursor)).jobs == []
    await store.add_items(job_id, "fetch", [], seal=True)
    [sealed], _ = await store.list_changed(after=cursor)
    assert sealed.stages["fetch"].total_final is True
    assert sealed.seq > changed.seq
    assert (await store.list_changed(after=ChangeCursor(sealed.seq))).jobs == []


async def test_adding_to_a_stage_keeps_its_progress_and_settles_it(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a", "b"))
    await store.increment(job_id, "fetch", item_key="a")
    await store.increment(job_id, "fetch", failed=1, item_key="b")
    stage = (await store.get_job(job_id)).stages["fetch"]
    assert (stage.status, stage.completed_items, stage.failed_items) == (
        StageStatus.IN_PROGRESS,
        1,
        1,
    )
    await store.add_items(job_id, "fetch", items("c"), seal=True)
    stage = (await store.get_job(job_id)).stages["fetch"]
    assert (stage.total_items, stage.status) == (3, StageStatus.IN_PROGRESS)
    await store.increment(job_id, "fetch", item_key="c")
    assert (await store.get_job(job_id)).stages["fetch"].status is StageStatus.COMPLETED


async def test_a_deleted_job_takes_its_ledger_and_failures_along(store: JobStore) -> None:
    # jobtrack never deletes a job; an operator may, by hand, in SQL.
    if store.backend == "memory":
        pytest.skip("the in-memory store has no way to delete a job")
    job_id = await new_job(store)
    kept = await new_job(store)
    for each in (job_id, kept):
        await store.add_items(each, "fetch", items("a", "b"))
        await store.record_failure(each, "fetch", "a", "boom")
    tables = ("job_items", "item_failures")
    if isinstance(store, SqliteJobStore):

        def delete() -> list[int]:
            connection = store.database.connection
            connection.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return [
                connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in tables
            ]

        left = await store.database.run(delete)
    else:
        from jobtrack.store.postgres import PostgresJobStore

        assert isinstance(store, PostgresJobStore)
        async with store.connection() as conn:
            await conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))
            left = []
            for table in tables:
                row = await (await conn.execute(f"SELECT count(*) FROM {table}")).fetchone()
                assert row is not None
                left.append(row[0])
    assert left == [2, 1]  # the other job's
    assert await store.tally_ledger(kept) == {"fetch": LedgerTally(2, 0, 0)}


async def test_producers_adding_overlapping_batches_at_once_count_each_key_once(
    store: JobStore,
) -> None:
    job_id = await new_job(store)
    keys = [f"k{i:04}" for i in range(3000)]
    batches = [keys[start : start + 1000] for start in range(0, 3000, 500)]  # each key twice
    added, _ = await asyncio.gather(
        asyncio.gather(*(store.add_items(job_id, "fetch", items(*batch)) for batch in batches)),
        store.add_progress([StageProgress(job_id, "fetch", completed_keys=keys[:100])]),
    )
    assert sum(added) == 3000
    assert (await store.get_job(job_id)).stages["fetch"].total_items == 3000
    assert await store.tally_ledger(job_id) == {"fetch": LedgerTally(3000, 100, 0)}


async def test_recorded_outcomes_count_in_the_tally_and_leave_the_missing(
    store: JobStore,
) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a", "b", "c", "d", "e"), seal=True)
    seq = (await store.get_job(job_id)).seq
    assert await store.record_outcomes(job_id, "fetch", ["a", "b"], ["c"]) == 3
    job = await store.get_job(job_id)
    assert job.seq == seq  # the job is not written
    assert (job.stages["fetch"].completed_items, job.stages["fetch"].failed_items) == (0, 0)
    assert await store.tally_ledger(job_id) == {
        "fetch": LedgerTally(items=5, counted=3, failed=1, recorded=3)
    }
    missing = await store.missing_items(job_id, "fetch")
    assert [item.key for item in missing] == ["d", "e"]


async def test_a_later_outcome_replaces_the_earlier_one(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a", "b"))
    assert await store.record_outcomes(job_id, "fetch", [], ["a", "b"]) == 2
    assert await store.record_outcomes(job_id, "fetch", ["a"]) == 1
    assert await store.tally_ledger(job_id) == {
        "fetch": LedgerTally(items=2, counted=2, failed=1, recorded=2)
    }


async def test_an_outcome_and_a_counted_key_count_the_item_once(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a", "b", "c"))
    await store.add_progress(
        [StageProgress(job_id, "fetch", completed_keys=["a"], failed_keys=["b"])]
    )
    await store.record_failure(job_id, "fetch", "b", "boom")
    assert await store.record_outcomes(job_id, "fetch", ["a"], ["b"]) == 2
    assert await store.tally_ledger(job_id) == {
        "fetch": LedgerTally(items=3, counted=2, failed=1, recorded=0)
    }
    assert [item.key for item in await store.missing_items(job_id, "fetch")] == ["c"]


async def test_outcomes_of_keys_not_in_the_ledger_are_left_out(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a"))
    assert await store.record_outcomes(job_id, "fetch", ["a", "x"], ["y"]) == 1
    assert await store.record_outcomes(job_id, "parse", ["a"]) == 0
    assert await store.record_outcomes(job_id, "fetch", []) == 0
    assert await store.tally_ledger(job_id) == {
        "fetch": LedgerTally(items=1, counted=1, failed=0, recorded=1)
    }


async def test_outcomes_survive_the_end_of_the_job(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a", "b"), seal=True)
    await store.add_items(job_id, "parse", [], seal=True)
    await store.record_outcomes(job_id, "fetch", ["a"], ["b"])
    await store.increment(job_id, "fetch", item_key="a")
    await store.increment(job_id, "fetch", failed=1, item_key="b")
    assert (await store.get_job(job_id)).status is JobStatus.COMPLETED
    # The counted keys went with the end; the recorded outcomes stay.
    assert await store.tally_ledger(job_id) == {
        "fetch": LedgerTally(items=2, counted=2, failed=1, recorded=2)
    }


async def test_record_outcomes_refusals(store: JobStore) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("a", "b"))
    with pytest.raises(InvalidRequest, match="both done and failed"):
        await store.record_outcomes(job_id, "fetch", ["a"], ["b", "a"])
    with pytest.raises(InvalidRequest):
        await store.record_outcomes(job_id, "fetch", ["a", ""])
    with pytest.raises(InvalidRequest, match="at most"):
        await store.record_outcomes(job_id, "fetch", [f"k{i}" for i in range(MAX_LEDGER_BATCH + 1)])
    with pytest.raises(JobNotFound):
        await store.record_outcomes("no-such-job", "fetch", ["a"])
    with pytest.raises(StageNotFound):
        await store.record_outcomes(job_id, "nope", ["a"])
    assert await store.tally_ledger(job_id) == {"fetch": LedgerTally(2, 0, 0)}


async def test_a_full_batch_of_outcomes_is_taken(store: JobStore) -> None:
    job_id = await new_job(store)
    keys = [f"k{i:05}" for i in range(MAX_LEDGER_BATCH)]
    await store.add_items(job_id, "fetch", items(*keys))
    assert await store.record_outcomes(job_id, "fetch", keys[:-10], keys[-10:]) == len(keys)
    assert await store.tally_ledger(job_id) == {
        "fetch": LedgerTally(len(keys), len(keys), 10, len(keys))
    }
    assert await store.missing_items(job_id, "fetch") == []


async def test_settled_items_are_the_counted_and_the_recorded_in_key_order(
    store: JobStore,
) -> None:
    job_id = await new_job(store)
    await store.add_items(job_id, "fetch", items("e", "d", "c", "b", "a", "é"))
    await store.add_progress([StageProgress(job_id, "fetch", completed_keys=["b", "x"])])
    await store.record_outcomes(job_id, "fetch", ["d", "é"], ["a"])
    assert await store.settled_items(job_id, "fetch") == ["a", "b", "d", "é"]
    assert await store.settled_items(job_id, "fetch", after="a", limit=2) == ["b", "d"]
    assert await store.settled_items(job_id, "fetch", after="d") == ["é"]
    assert await store.settled_items(job_id, "parse") == []
    with pytest.raises(JobNotFound):
        await store.settled_items("no-such-job", "fetch")
    with pytest.raises(StageNotFound):
        await store.settled_items(job_id, "nope")
