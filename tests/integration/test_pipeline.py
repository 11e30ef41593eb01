"""The scan pipeline end to end on the embedded default: real files, real SQLite."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from jobtrack.broker import InMemoryBroker
from jobtrack.errors import InvalidRequest
from jobtrack.model import Job, JobStatus, StageStatus
from jobtrack.pipeline.catalog import ArtifactStatus
from jobtrack.pipeline.sample import SampleManifest, generate_sample
from jobtrack.pipeline.stages import CACHE, SCAN, THUMBNAIL
from jobtrack.runtime import EmbeddedRuntime, Settings
from jobtrack.runtime.builtin import rendition_work
from tests.postgres import database_url, require_server, scratch_database

GOOD, BROKEN = 14, 2


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleManifest:
    root = tmp_path_factory.mktemp("collection")
    return generate_sample(root, count=GOOD + BROKEN, broken=BROKEN, max_megapixels=2.0)


def settings_for(data_dir: Path, *, progress: bool = True) -> Settings:
    return Settings(
        data_dir=data_dir,
        store_url=f"sqlite:///{data_dir / 'jobtrack.db'}",
        consumer_progress=progress,
        workers=2,
    )


def assert_exact(job: Job, *, total: int, failed: int) -> None:
    assert job.status is JobStatus.COMPLETED
    scan = job.stage(SCAN)
    assert (scan.completed_items, scan.failed_items, scan.total_items) == (total, 0, total)
    for name in (THUMBNAIL, CACHE):
        stage = job.stage(name)
        assert stage.status is StageStatus.COMPLETED
        assert stage.total_final
        assert (stage.completed_items, stage.failed_items, stage.total_items) == (
            total - failed,
            failed,
            total,
        )


def renditions(data_dir: Path, job: Job, stage: str) -> list[Path]:
    folder = data_dir / "renditions" / job.attributes["collection"]["id"] / stage
    return sorted(folder.glob("*.jpg"))


async def test_scan_produces_every_rendition_with_exact_counts(
    sample: SampleManifest, tmp_path: Path
) -> None:
    async with EmbeddedRuntime(settings_for(tmp_path)) as runtime:
        outcome = await runtime.scan(sample.root)
        states = await runtime.catalog.images_of_job(
            outcome.job.attributes["collection"]["id"], outcome.job.id
        )
    assert outcome.created
    assert not outcome.reconciled
    assert_exact(outcome.job, total=GOOD + BROKEN, failed=BROKEN)
    assert outcome.report is not None
    assert outcome.report.skipped == len(sample.others)
    thumbnails = renditions(tmp_path, outcome.job, THUMBNAIL)
    caches = renditions(tmp_path, outcome.job, CACHE)
    assert (len(thumbnails), len(caches)) == (GOOD, GOOD)
    for path in thumbnails:
        with Image.open(path) as image:
            assert max(image.size) <= 300
    failed = {
        state.image.relpath
        for state in states
        for artifact in state.artifacts.values()
        if artifact.status is ArtifactStatus.FAILED and artifact.error
    }
    assert failed == {str(p.relative_to(sample.root)) for p in sample.broken}


async def test_rescan_of_an_unchanged_collection_retries_only_its_failures(
    sample: SampleManifest, tmp_path: Path
) -> None:
    async with EmbeddedRuntime(settings_for(tmp_path)) as runtime:
        first = await runtime.scan(sample.root)
        before = {p: p.stat().st_mtime_ns for p in renditions(tmp_path, first.job, THUMBNAIL)}
        second = await runtime.scan(sample.root)
    assert second.job.id != first.job.id
    assert_exact(second.job, total=GOOD + BROKEN, failed=BROKEN)
    assert second.report is not None
    # The good images count as done on the spot; the broken ones are tried again.
    assert (second.report.up_to_date, second.report.published) == (GOOD, 2 * BROKEN)
    after = {p: p.stat().st_mtime_ns for p in renditions(tmp_path, second.job, THUMBNAIL)}
    assert after == before


async def test_rescan_reworks_only_what_changed(tmp_path: Path) -> None:
    manifest = generate_sample(tmp_path / "c", count=6, broken=0, max_megapixels=0.5)
    data = tmp_path / "state"
    async with EmbeddedRuntime(settings_for(data)) as runtime:
        await runtime.scan(manifest.root)
        changed = manifest.images[0]
        stat = changed.stat()
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        again = await runtime.scan(manifest.root)
    assert again.report is not None
    assert (again.report.up_to_date, again.report.published) == (5, 2)
    assert_exact(again.job, total=6, failed=0)


async def test_one_job_per_collection_at_a_time(sample: SampleManifest, tmp_path: Path) -> None:
    async with EmbeddedRuntime(settings_for(tmp_path)) as runtime:
        first = await runtime.scanner.start(sample.root)
        second = await runtime.scanner.start(sample.root)
        assert first.created
        assert not second.created
        assert second.job.id == first.job.id
        await runtime.store.end_job(first.job.id, JobStatus.CANCELLED)
        third = await runtime.scanner.start(sample.root)
        assert third.created
        assert third.job.id != first.job.id


async def test_hostile_images_are_failed_items(tmp_path: Path) -> None:
    root = tmp_path / "hostile"
    generate_sample(root, count=3, broken=0, max_megapixels=0.3)
    # Decompression bombs: 1.6 gigapixels (past Pillow's own limit) and
    # 72 megapixels (under Pillow's, over ours), both a few kilobytes on disk.
    Image.new("1", (40000, 40000)).save(root / "bomb.png", optimize=True)
    Image.new("1", (9000, 8000)).save(root / "bomb-72mp.png", optimize=True)
    (root / "empty.jpg").write_bytes(b"")
    async with EmbeddedRuntime(settings_for(tmp_path / "state")) as runtime:
        outcome = await runtime.scan(root)
        states = await runtime.catalog.images_of_job(
            outcome.job.attributes["collection"]["id"], outcome.job.id
        )
    assert_exact(outcome.job, total=6, failed=3)
    errors = {
        s.image.relpath: s.artifacts[THUMBNAIL].error
        for s in states
        if s.artifacts[THUMBNAIL].status is ArtifactStatus.FAILED
    }
    assert sorted(errors) == ["bomb-72mp.png", "bomb.png", "empty.jpg"]
    assert "9000x8000 pixels exceeds the limit of 64000000" in str(errors["bomb-72mp.png"])
    assert all(error and "Traceback" not in error for error in errors.values())


async def test_without_consumer_progress_reconciliation_completes_the_job(
    sample: SampleManifest, tmp_path: Path
) -> None:
    async with EmbeddedRuntime(settings_for(tmp_path, progress=False)) as runtime:
        outcome = await runtime.scan(sample.root)
    assert outcome.reconciled
    assert_exact(outcome.job, total=GOOD + BROKEN, failed=BROKEN)


async def test_reconciler_counts_what_is_really_on_disk(
    sample: SampleManifest, tmp_path: Path
) -> None:
    async with EmbeddedRuntime(settings_for(tmp_path)) as runtime:
        outcome = await runtime.scan(sample.root)
        counts, missing = await runtime.reconciler.inspect(outcome.job)
        assert await runtime.reconciler.count(outcome.job) == counts
        assert counts[THUMBNAIL].completed_items == GOOD
        assert counts[THUMBNAIL].failed_items == BROKEN
        assert missing == {THUMBNAIL: [], CACHE: []}
        lost = renditions(tmp_path, outcome.job, THUMBNAIL)[0]
        lost.unlink()
        counts, missing = await runtime.reconciler.inspect(outcome.job)
    assert (counts[THUMBNAIL].completed_items, counts[CACHE].completed_items) == (GOOD - 1, GOOD)
    assert missing == {THUMBNAIL: [lost.stem], CACHE: []}


async def test_a_second_scan_follows_the_running_job(
    sample: SampleManifest, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    async with EmbeddedRuntime(settings) as owner, EmbeddedRuntime(settings) as follower:
        first, second = await asyncio.gather(owner.scan(sample.root), follower.scan(sample.root))
    assert first.job.id == second.job.id
    assert sorted([first.created, second.created]) == [False, True]
    assert_exact(second.job, total=GOOD + BROKEN, failed=BROKEN)


async def test_an_abandoned_job_is_taken_over(sample: SampleManifest, tmp_path: Path) -> None:
    settings = replace(settings_for(tmp_path), stuck_after=0.2)
    async with EmbeddedRuntime(settings) as runtime:
        # A scan whose process died: the job exists, nothing works on it.
        dead = await runtime.scanner.start(sample.root)
        await asyncio.sleep(0.3)
        outcome = await runtime.scan(sample.root)
        abandoned = await runtime.store.get_job(dead.job.id)
    assert outcome.created
    assert outcome.job.id != dead.job.id
    assert_exact(outcome.job, total=GOOD + BROKEN, failed=BROKEN)
    assert abandoned.status is JobStatus.FAILED
    assert abandoned.message == "abandoned: no progress for over 0.2 s"


async def test_a_cancelled_scan_cancels_its_job(sample: SampleManifest, tmp_path: Path) -> None:
    async with EmbeddedRuntime(settings_for(tmp_path)) as runtime:
        started = asyncio.Event()
        task = asyncio.create_task(runtime.scan(sample.root, on_progress=lambda _: started.set()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [job] = await runtime.store.list_jobs()
        assert (job.status, job.message) == (JobStatus.CANCELLED, "interrupted before the end")
        again = await runtime.scan(sample.root)
    assert again.created
    assert_exact(again.job, total=GOOD + BROKEN, failed=BROKEN)


async def test_rescan_remakes_renditions_gone_from_disk(
    sample: SampleManifest, tmp_path: Path
) -> None:
    async with EmbeddedRuntime(settings_for(tmp_path)) as runtime:
        first = await runtime.scan(sample.root)
        for path in renditions(tmp_path, first.job, THUMBNAIL)[:3]:
            path.unlink()
        again = await runtime.scan(sample.root)
    assert again.report is not None
    assert (again.report.up_to_date, again.report.published) == (GOOD - 3, 3 + 2 * BROKEN)
    assert_exact(again.job, total=GOOD + BROKEN, failed=BROKEN)
    assert len(renditions(tmp_path, again.job, THUMBNAIL)) == GOOD


async def test_a_data_folder_inside_the_collection_is_not_scanned(tmp_path: Path) -> None:
    manifest = generate_sample(tmp_path / "c", count=4, broken=0, max_megapixels=0.3)
    async with EmbeddedRuntime(settings_for(manifest.root / "state")) as runtime:
        await runtime.scan(manifest.root)
        again = await runtime.scan(manifest.root)
    assert_exact(again.job, total=4, failed=0)


async def test_an_unwritable_output_is_retried_then_fails_the_items_with_its_error(
    sample: SampleManifest, tmp_path: Path
) -> None:
    (tmp_path / "renditions").write_text("a file where the folder should be")
    async with EmbeddedRuntime(settings_for(tmp_path)) as runtime:
        outcome = await runtime.scan(sample.root)
        states = await runtime.catalog.images_of_job(
            outcome.job.attributes["collection"]["id"], outcome.job.id
        )
        assert outcome.job.status is JobStatus.FAILED
        for name in (THUMBNAIL, CACHE):
            stage = outcome.job.stage(name)
            assert (stage.completed_items, stage.failed_items, stage.total_items) == (
                0,
                GOOD + BROKEN,
                GOOD + BROKEN,
            )
        # The broken files fail on their own error at once; the good images
        # fail on the folder's error, recorded after their last attempt.
        errors = [s.artifacts[THUMBNAIL].error or "" for s in states]
        assert len(errors) == GOOD + BROKEN
        assert sum("Not a directory" in error for error in errors) == GOOD
        assert isinstance(runtime.broker, InMemoryBroker)
        assert runtime.broker.dead_letters == {}
        (tmp_path / "renditions").unlink()
        again = await runtime.scan(sample.root)
    assert_exact(again.job, total=GOOD + BROKEN, failed=BROKEN)


async def test_a_killed_image_worker_loses_nothing(sample: SampleManifest, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_a_worker(job: Job) -> None:
        if killed or job.stage(THUMBNAIL).done_items == 0:
            return
        pool = rendition_work(runtime.app).pool
        processes = pool._executor._processes  # type: ignore[attr-defined]
        pid = next(iter(processes))
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    async with EmbeddedRuntime(settings_for(tmp_path)) as runtime:
        outcome = await runtime.scan(sample.root, on_progress=kill_a_worker)
    assert len(killed) == 1
    assert_exact(outcome.job, total=GOOD + BROKEN, failed=BROKEN)


async def test_renditions_of_removed_images_are_deleted(tmp_path: Path) -> None:
    manifest = generate_sample(tmp_path / "c", count=5, broken=0, max_megapixels=0.3)
    data = tmp_path / "state"
    async with EmbeddedRuntime(settings_for(data)) as runtime:
        first = await runtime.scan(manifest.root)
        manifest.images[0].unlink()
        again = await runtime.scan(manifest.root)
    assert again.report is not None
    assert (again.report.removed, again.report.up_to_date) == (2, 4)
    assert_exact(again.job, total=4, failed=0)
    for stage in (THUMBNAIL, CACHE):
        assert len(renditions(data, first.job, stage)) == 4
    assert "2 renditions of removed images deleted" in again.job.stage(SCAN).message


async def test_a_job_whose_scan_process_died_is_taken_over_at_once(
    sample: SampleManifest, tmp_path: Path
) -> None:
    child = subprocess.Popen(["true"])  # noqa: ASYNC220 - a process that is gone at once
    child.wait()
    dead_pid = child.pid
    async with EmbeddedRuntime(settings_for(tmp_path)) as runtime:
        runner = {"host": socket.gethostname(), "pid": dead_pid}
        dead = await runtime.scanner.start(sample.root, attributes={"runner": runner})
        outcome = await runtime.scan(sample.root)
        abandoned = await runtime.store.get_job(dead.job.id)
    assert outcome.created
    assert outcome.job.attributes["runner"] == {"host": socket.gethostname(), "pid": os.getpid()}
    assert_exact(outcome.job, total=GOOD + BROKEN, failed=BROKEN)
    assert (abandoned.status, abandoned.message) == (
        JobStatus.FAILED,
        f"abandoned: the scan that ran it (process {dead_pid}) is gone",
    )


async def test_a_scan_on_postgresql_ends_exact(sample: SampleManifest, tmp_path: Path) -> None:
    require_server()
    with scratch_database("pipeline") as name:
        settings = replace(settings_for(tmp_path), store_url=database_url(name))
        async with EmbeddedRuntime(settings) as runtime:
            first = await runtime.scan(sample.root)
            again = await runtime.scan(sample.root)
    assert_exact(first.job, total=GOOD + BROKEN, failed=BROKEN)
    assert_exact(again.job, total=GOOD + BROKEN, failed=BROKEN)
    assert again.report is not None
    assert (again.report.up_to_date, again.report.published) == (GOOD, 2 * BROKEN)
    assert len(renditions(tmp_path, first.job, THUMBNAIL)) == GOOD


async def test_a_bad_setting_leaves_nothing_behind(tmp_path: Path) -> None:
    settings = replace(settings_for(tmp_path / "state"), broker_url="bogus://x")
    with pytest.raises(InvalidRequest, match="unsupported broker URL"):
        async with EmbeddedRuntime(settings):
            raise AssertionError("not reached")
    assert not (tmp_path / "state").exists()
