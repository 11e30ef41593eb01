"""A batch entry the store refuses never takes its batch-mates down.

Every backend screens each entry of ``add_progress`` on its own: text no
engine can store (a NUL character, a lone surrogate), counts out of bounds.
The entry comes back refused, with the reason; the rest of the batch is
written.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import jobtrack.store.base
from jobtrack.errors import InvalidIncrement
from jobtrack.model import MAX_INCREMENT
from jobtrack.store import JobStore, StageProgress
from jobtrack.tracking.coalescer import Coalescer
from jobtrack.tracking.progress_log import ProgressLog
from tests.conftest import SteppingClock
from tests.contract.conftest import make_store

STAGES = ("scan", "thumbnail", "cache")


@pytest.mark.parametrize(
    ("poison", "reason"),
    [
        (StageProgress("job\x00x", "thumbnail", completed_keys=["k"]), "NUL"),
        (StageProgress("job\udc80", "thumbnail", completed=1), "surrogate"),
        (StageProgress("{job}", "thumb\x00nail", completed=1), "NUL"),
        (StageProgress("{job}", "thumb\ud800", completed=1), "surrogate"),
        (StageProgress("{job}", "scan", completed_keys=["bad\udfff"]), "surrogate"),
        (StageProgress("{job}", "scan", failed_keys=["bad\x00"]), "NUL"),
        (StageProgress("{job}", "scan", completed=-1), "negative"),
        (StageProgress("{job}", "scan", completed=MAX_INCREMENT + 1), "exceeds"),
    ],
    ids=[
        "nul-job",
        "surrogate-job",
        "nul-stage",
        "surrogate-stage",
        "surrogate-key",
        "nul-key",
        "negative",
        "too-many",
    ],
)
async def test_a_refused_entry_leaves_its_batch_mates_written(
    store: JobStore, poison: StageProgress, reason: str
) -> None:
    victim = await store.create_job("collection-scan", STAGES)
    other = await store.create_job("collection-scan", STAGES)
    if poison.job_id == "{job}":
        poison = StageProgress(
            other.id,
            poison.stage,
            poison.completed,
            poison.failed,
            poison.completed_keys,
            poison.failed_keys,
        )
    results = await store.add_progress(
        [
            StageProgress(victim.id, "cache", completed_keys=["a", "b"]),
            poison,
            StageProgress(victim.id, "thumbnail", completed_keys=["a", "b"]),
            StageProgress(victim.id, "scan", completed=3),
        ]
    )
    assert [r.counted for r in results] == [2, 0, 2, 3]
    assert [r.stage is None for r in results] == [False, True, False, False]
    refused = results[1]
    assert refused.progress is poison
    assert refused.refused is not None
    assert reason in refused.refused
    with pytest.raises(InvalidIncrement):
        refused.as_increment()
    job = await store.get_job(victim.id)
    counts = {name: s.completed_items for name, s in job.stages.items()}
    assert counts == {"scan": 3, "thumbnail": 2, "cache": 2}
    untouched = await store.get_job(other.id)
    assert all(s.completed_items == 0 for s in untouched.stages.values())


async def test_a_batch_of_refused_entries_only_writes_nothing(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    results = await store.add_progress(
        [StageProgress("x\x00", "a", completed=1), StageProgress(job.id, "a", failed=-2)]
    )
    assert [r.stage for r in results] == [None, None]
    assert [r.refused is not None for r in results] == [True, True]
    assert (await store.get_job(job.id)).updated_at == job.updated_at


async def test_the_loopback_batch_on_postgresql(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clock: SteppingClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One flush holding a message with a NUL byte in its job id and three
    valid items of another job: the three are written, the poison entry is
    refused and reported, each receipt tells which."""
    store = make_store("postgres", tmp_path, clock, request)
    try:
        job = await store.create_job("collection-scan", STAGES)
        await store.raise_total(job.id, "cache", by=3)
        await store.raise_total(job.id, "thumbnail", by=3)
        coalescer = Coalescer(store, ProgressLog(50), flush_interval=60)
        poison = coalescer.add("poison\x00job", "cache", item_key="img-0", failed=False)
        valid = [
            coalescer.add(job.id, "cache", item_key="img-1", failed=False),
            coalescer.add(job.id, "cache", item_key="img-2", failed=False),
            coalescer.add(job.id, "thumbnail", item_key="img-1", failed=False),
        ]
        with caplog.at_level(logging.WARNING, logger="jobtrack.tracking"):
            assert await coalescer.flush()
        assert await asyncio.gather(*valid) == [True, True, True]
        assert [r.refused for r in valid] == [None, None, None]
        assert not await poison
        assert poison.refused is not None
        assert "NUL" in poison.refused
        stages = (await store.get_job(job.id)).stages
        assert (stages["cache"].completed_items, stages["thumbnail"].completed_items) == (2, 1)
        refusals = [r for r in caplog.records if getattr(r, "action", "") == "progress_refused"]
        assert len(refusals) == 1
        assert "poison" in refusals[0].getMessage()
        assert coalescer.pending == 0
        await coalescer.aclose(max_wait=1.0)
    finally:
        await store.aclose()


async def test_a_stage_past_the_bound_goes_as_several_entries_of_one_write(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobtrack.store.base, "MAX_INCREMENT", 10)
    job = await store.create_job("t", ["a", "b"])
    await store.seal_total(job.id, "a", total=30)
    coalescer = Coalescer(store, ProgressLog(50), flush_interval=60, max_entry=10)
    receipts = [coalescer.add(job.id, "a", item_key=str(i), failed=i % 5 == 0) for i in range(25)]
    receipts += [coalescer.add(job.id, "a", item_key=str(i), failed=True) for i in range(3)]
    receipts += [coalescer.add(job.id, "a", item_key=None, failed=False) for _ in range(5)]
    receipts.append(coalescer.add(job.id, "b", item_key=None, failed=True))
    assert await coalescer.flush()
    assert await asyncio.gather(*receipts) == [True] * 34
    after = await store.get_job(job.id)
    a, b = after.stage("a"), after.stage("b")
    # keys 0, 5, 10, 15, 20 failed; 1 and 2 reported failed too, but completed first
    assert (a.completed_items, a.failed_items, a.status.value) == (25, 5, "completed")
    assert (b.completed_items, b.failed_items) == (0, 1)
    await coalescer.aclose(max_wait=1.0)
