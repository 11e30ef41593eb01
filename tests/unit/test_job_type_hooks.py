"""What the entry points read through a job type: failed items (the type's
hook, else the ledger), retry, details; and the built-in app's collection scan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobtrack.errors import Conflict
from jobtrack.jobs.types import JobType, failure_json, item_failures_of, ledger_failures
from jobtrack.model import Job
from jobtrack.pipeline.reconciler import CollectionScanReconciler
from jobtrack.runtime import App, Settings
from jobtrack.runtime.builtin import builtin_app, collection_scan_type
from jobtrack.store.ledger import ItemFailure, LedgerItem

AT = datetime(2026, 1, 2, tzinfo=UTC)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings.from_env({}, data_dir=tmp_path, store_url="memory://")
    async with App(settings, job_types=[JobType("imports", ["parse", "write"])]) as opened:
        yield opened


async def failed_job(app: App) -> Job:
    job = await app.store.create_job("imports", ["parse", "write"])
    await app.store.add_items(job.id, "parse", [LedgerItem(k, {"n": k}) for k in "abcd"])
    await app.store.add_items(job.id, "write", [LedgerItem("a")])
    await app.store.record_failure(job.id, "write", "a", "disk full", attempts=3)
    for key in "dbc":
        await app.store.record_failure(job.id, "parse", key, f"bad {key}")
    return job


def test_failure_json_is_one_entry_per_key_with_its_first_error() -> None:
    failures = [
        ItemFailure("cache", "x.jpg", "truncated", 1, AT),
        ItemFailure("cache", "y.jpg", "too big", 1, AT),
        ItemFailure("thumbnail", "x.jpg", "other", 2, AT),
        ItemFailure("thumbnail", "x.jpg", "again", 2, AT),
    ]
    assert failure_json(failures) == [
        {"image": "x.jpg", "stages": ["cache", "thumbnail"], "error": "truncated"},
        {"image": "y.jpg", "stages": ["cache"], "error": "too big"},
    ]
    assert failure_json([]) == []


async def test_a_type_without_a_hook_reads_the_ledger_in_pages(app: App) -> None:
    job = await failed_job(app)
    read = await app.get_type("imports").item_failures(app, job, 10)
    assert [(f.stage, f.key, f.error, f.attempts, f.payload) for f in read] == [
        ("parse", "b", "bad b", 1, {"n": "b"}),
        ("parse", "c", "bad c", 1, {"n": "c"}),
        ("parse", "d", "bad d", 1, {"n": "d"}),
        ("write", "a", "disk full", 3, None),
    ]
    assert [f.key for f in await ledger_failures(app, job, 2)] == ["b", "c"]
    assert await ledger_failures(app, job, 0) == []


async def test_an_unregistered_type_reads_the_ledger_and_a_hook_replaces_it(app: App) -> None:
    job = await failed_job(app)
    other = await app.store.create_job("unknown", ["one"])
    await app.store.add_items(other.id, "one", [LedgerItem("k")])
    await app.store.record_failure(other.id, "one", "k", "no")
    assert [f.key for f in await item_failures_of(app, other, limit=5)] == ["k"]
    seen: list[tuple[str, int]] = []

    async def mine(hooked: App, asked: Job, limit: int) -> list[ItemFailure]:
        seen.append((asked.id, limit))
        return [ItemFailure("write", "z", "from elsewhere", 1, AT)]

    hooked = JobType("imports", ["parse", "write"], failures=mine)
    assert [f.key for f in await hooked.item_failures(app, job, 7)] == ["z"]
    assert seen == [(job.id, 7)]


async def test_retry_and_details_come_from_the_hooks(app: App) -> None:
    job = await failed_job(app)
    plain = app.get_type("imports")
    with pytest.raises(Conflict, match="its type has no retry"):
        await plain.retry_job(app, job)
    assert plain.details(app, job) == []

    async def again(hooked: App, old: Job) -> Job:
        return await hooked.store.create_job("imports", ["parse", "write"])

    hooked = JobType("imports", ["parse"], retry=again, details=lambda a, j: (f"id {j.id}",))
    assert (await hooked.retry_job(app, job)).id != job.id
    assert hooked.details(app, job) == [f"id {job.id}"]


async def test_the_builtin_app_has_the_collection_scan(tmp_path: Path) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path, store_url="memory://")
    started: list[str] = []

    async def scans(path: str) -> Job:
        started.append(path)
        return await opened.store.create_job("collection-scan", ["scan", "thumbnail", "cache"])

    async with builtin_app(settings, scans=scans) as opened:
        assert list(opened.job_types) == ["collection-scan"]
        scan = opened.get_type("collection-scan")
        assert scan.stages == ("scan", "thumbnail", "cache")
        assert {
            stage: (handler.queue, handler.executor, handler.feeds)
            for stage, handler in scan.handlers.items()
        } == {
            "thumbnail": ("jobtrack.thumbnail", "async", frozenset()),
            "cache": ("jobtrack.cache", "async", frozenset()),
        }
        assert not scan.discovered("thumbnail")  # the scanner, the producer, adds every item
        assert (scan.max_attempts, scan.backoff, scan.max_backoff) == (5, 0.2, 10.0)
        assert scan.truth is not None
        reconciler = scan.truth(opened, scan)
        assert isinstance(reconciler, CollectionScanReconciler)
        assert reconciler is opened.reconciler
        bare = await opened.store.create_job("collection-scan", ["scan", "thumbnail", "cache"])
        assert await scan.item_failures(opened, bare, 10) == []
        assert scan.details(opened, bare) == []
        with pytest.raises(Conflict, match="has no collection to scan again"):
            await scan.retry_job(opened, bare)
        job = await opened.store.create_job(
            "collection-scan",
            ["scan", "thumbnail", "cache"],
            attributes={"collection": {"id": "c1", "path": "/photos"}},
        )
        again = await scan.retry_job(opened, job)
        assert started == ["/photos"]
        assert again.id != job.id
        lines = scan.details(opened, job)
        renditions = settings.data_dir / "renditions"
        assert lines[0] == "  collection: /photos"
        assert [line.split(": ", 1)[0].strip() for line in lines[1:]] == [
            "thumbnail renditions",
            "cache renditions",
        ]
        assert all(line.split(": ", 1)[1].startswith(str(renditions)) for line in lines[1:])
    without = collection_scan_type()
    with pytest.raises(Conflict, match="jobtrack scan /photos"):
        await without.retry_job(opened, job)
