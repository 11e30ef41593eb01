"""A scan cancelled through the API stops walking within a second and gives
its slot back: measured on a real folder of 40,000 files, with the real
server in a subprocess (and the launcher itself, in process, for the slot)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from jobtrack.api.scans import ScanLauncher
from jobtrack.model import JobStatus
from jobtrack.pipeline.stages import SCAN
from jobtrack.runtime import Settings, cancel_job
from jobtrack.store import SqliteJobStore
from tests.api.server import running_server

pytestmark = pytest.mark.slow

FILES, FOLDERS = 40_000, 8


def _fill(root: Path) -> None:
    for folder in range(FOLDERS):
        sub = root / f"f{folder}"
        sub.mkdir(parents=True)
        for n in range(FILES // FOLDERS):
            (sub / f"{n:05}.jpg").touch()


def _walked(job: dict[str, object]) -> int:
    stages = job["stages"]
    assert isinstance(stages, dict)
    return int(stages["scan"]["total_items"])


def test_a_cancel_through_the_api_stops_the_walk(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"JOBTRACK_WORKERS": "1"}) as server:
        _fill(server.root / "big")
        with server.client() as client:
            job = client.post("/api/scans", json={"path": "big"}).json()
            deadline = time.monotonic() + 60
            while _walked(client.get(f"/api/jobs/{job['id']}").json()) < 2_000:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.02)
            answer = client.post(f"/api/jobs/{job['id']}/cancel")
            assert (answer.status_code, answer.json()["outcome"]) == (200, "cancelled")
            at_cancel = _walked(answer.json()["job"])
            time.sleep(1.0)
            one_second = _walked(client.get(f"/api/jobs/{job['id']}").json())
            time.sleep(3.0)
            four_seconds = _walked(client.get(f"/api/jobs/{job['id']}").json())
    print(f"walked: {at_cancel} at the cancel, {one_second} 1 s after, {four_seconds} 4 s after")
    assert one_second - at_cancel < 2_000
    assert four_seconds == one_second  # stopped
    assert four_seconds < FILES


async def test_a_cancelled_scan_gives_its_slot_back_within_a_second(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _fill(root / "big")
    data_dir = tmp_path / "state"
    settings = Settings(data_dir=data_dir, store_url=f"sqlite:///{data_dir}/jobtrack.db", workers=1)
    launcher = ScanLauncher(settings, (root,))
    job = await launcher.start("big")
    store = SqliteJobStore.open(str(data_dir / "jobtrack.db"))
    try:
        deadline = time.monotonic() + 60
        while (await store.get_job(job.id)).stages[SCAN].total_items < 2_000:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert launcher.running == 1
        assert (await cancel_job(store, job.id, message="stop", source="api")).cancelled
        cancelled_at = time.monotonic()
        while launcher.running:
            assert time.monotonic() - cancelled_at < 1.0, "the scan still holds its slot"
            await asyncio.sleep(0.01)
        print(f"slot given back {time.monotonic() - cancelled_at:.3f} s after the cancel")
        assert (await store.get_job(job.id)).status is JobStatus.CANCELLED
    finally:
        await launcher.aclose()
        await store.aclose()
