"""A scan walks the folder that was checked against the roots: a folder
swapped for a symlink out of the roots right after the check leads nowhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jobtrack.api import scans
from jobtrack.api.scans import ScanLauncher
from jobtrack.model import Job, JobStatus
from jobtrack.pipeline.sample import generate_sample
from jobtrack.pipeline.walk import ResolvedRoot
from jobtrack.runtime import Settings
from jobtrack.store import SqliteJobStore


async def _ended(store: SqliteJobStore, job_id: str) -> Job:
    for _ in range(600):
        job = await store.get_job(job_id)
        if job.status.terminal:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


async def test_a_folder_swapped_after_the_check_is_not_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = tmp_path / "photos"
    album = roots / "album"
    generate_sample(album, count=3, broken=0, max_megapixels=0.1)
    outside = tmp_path / "outside"
    generate_sample(outside, count=4, broken=0, max_megapixels=0.1)
    state = tmp_path / "state"
    settings = Settings(data_dir=state, store_url=f"sqlite:///{state / 'jobtrack.db'}", workers=1)
    checked = scans.confine

    def confine_then_swap(path: str, allowed: tuple[Path, ...]) -> ResolvedRoot:
        folder = checked(path, allowed)
        album.rename(roots / "album-moved")  # the race, made certain
        album.symlink_to(outside, target_is_directory=True)
        return folder

    monkeypatch.setattr(scans, "confine", confine_then_swap)
    launcher = ScanLauncher(settings, (roots.resolve(),))
    try:
        started = await launcher.start("album")
        store = SqliteJobStore.open(str(state / "jobtrack.db"))
        try:
            job = await _ended(store, started.id)
        finally:
            await store.aclose()
    finally:
        await launcher.aclose()
    assert job.attributes["collection"]["path"] == str(roots.resolve() / "album")
    assert (job.status, job.message) == (
        JobStatus.FAILED,
        f"scan failed: {roots.resolve() / 'album'}: the folder changed since it was checked",
    )
    assert all(stage.total_items == 0 for stage in job.stages.values())
    assert sorted((state / "renditions").rglob("*.jpg")) == []
