"""The scan launcher keeps track of a scan whose job has ended while its task
is still closing down: a new scan of the same folder does not make it lose
that task, which still takes a slot and is stopped and awaited on close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from jobtrack.api import scans
from jobtrack.api.scans import ScanLauncher
from jobtrack.errors import ScanNotStarted
from jobtrack.model import Job, JobStatus
from jobtrack.pipeline.walk import ResolvedRoot
from jobtrack.runtime import Settings
from jobtrack.store import InMemoryJobStore


class SlowToClose:
    """A runtime whose scan reports its job ended at once, then takes until
    it is cancelled to close down (its pool, its broker)."""

    store = InMemoryJobStore()
    started: list[str] = []
    cancelled: list[str] = []
    finished: list[str] = []

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __aenter__(self) -> SlowToClose:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def scan(self, folder: ResolvedRoot, *, on_progress: Callable[[Job], Any]) -> Any:
        job = await self.store.create_job("collection-scan", ["scan"])
        self.started.append(job.id)
        on_progress(
            (await self.store.end_job(job.id, JobStatus.CANCELLED, message="cancelled")).job
        )
        try:
            await asyncio.Event().wait()  # closing down, for as long as it takes
        except asyncio.CancelledError:
            self.cancelled.append(job.id)
            await asyncio.sleep(0.05)  # it takes a moment to stop
            self.finished.append(job.id)
            raise


@pytest.fixture
def launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ScanLauncher:
    (tmp_path / "photos" / "album").mkdir(parents=True)
    SlowToClose.started, SlowToClose.cancelled, SlowToClose.finished = [], [], []
    monkeypatch.setattr(scans, "EmbeddedRuntime", SlowToClose)
    settings = Settings(data_dir=tmp_path / "state", store_url="memory://")
    return ScanLauncher(settings, ((tmp_path / "photos").resolve(),))


async def test_a_closing_scan_is_still_stopped_and_awaited_on_close(
    launcher: ScanLauncher,
) -> None:
    first = await launcher.start("album")
    second = await launcher.start("album")  # the first's job has ended: a new scan
    assert first.id != second.id
    assert SlowToClose.started == [first.id, second.id]
    assert launcher.running == 2  # the closing one still takes a slot
    await launcher.aclose()
    assert (
        sorted(SlowToClose.cancelled)
        == sorted(SlowToClose.finished)
        == sorted([first.id, second.id])
    )
    assert launcher.running == 0


async def test_closing_scans_count_against_the_limit(
    launcher: ScanLauncher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scans, "MAX_SCANS", 2)
    try:
        await launcher.start("album")
        await launcher.start("album")
        with pytest.raises(ScanNotStarted):
            await launcher.start("album")
        assert len(SlowToClose.started) == 2
    finally:
        await launcher.aclose()
