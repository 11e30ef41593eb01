"""A walk that finds no image for a long while still shows it is alive."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import jobtrack.pipeline.scanner as scanner_module
from jobtrack.broker import InMemoryBroker
from jobtrack.pipeline.catalog import InMemoryCatalog
from jobtrack.pipeline.scanner import Scanner
from jobtrack.pipeline.stages import SCAN
from jobtrack.runtime.builtin import collection_scan_type
from jobtrack.store import InMemoryJobStore


async def test_a_slow_walk_touches_its_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (32, 24), "teal").save(root / "a.jpg")
    real = scanner_module._next_batch

    def slow(entries: Iterator[Any], size: int, report: Any) -> Any:
        time.sleep(0.3)  # a long stretch of folders without images
        return real(entries, size, report)

    monkeypatch.setattr(scanner_module, "_next_batch", slow)
    store = InMemoryJobStore()
    scanner = Scanner(
        store=store,
        catalog=InMemoryCatalog(),
        broker=InMemoryBroker(),
        job_type=collection_scan_type(),
        heartbeat=0.05,
    )
    start = await scanner.start(root)
    touched: list[str] = []
    start_stage = store.start_stage

    async def spy(job_id: str, stage: str, *, message: str | None = None) -> Any:
        touched.append(message or "")
        return await start_stage(job_id, stage, message=message)

    monkeypatch.setattr(store, "start_stage", spy)
    report = await scanner.run(start.job, start.collection)
    beats = [m for m in touched if m.startswith(f"walking {root}:")]
    assert len(beats) >= 5  # about one every 0.05 s over 0.6 s of walking
    assert report.images == 1
    assert (await store.get_job(start.job.id)).stages[SCAN].total_final


async def test_a_heartbeat_that_fails_beats_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (32, 24), "teal").save(root / "a.jpg")
    real = scanner_module._next_batch

    def slow(entries: Iterator[Any], size: int, report: Any) -> Any:
        time.sleep(0.3)
        return real(entries, size, report)

    monkeypatch.setattr(scanner_module, "_next_batch", slow)
    store = InMemoryJobStore()
    scanner = Scanner(
        store=store,
        catalog=InMemoryCatalog(),
        broker=InMemoryBroker(),
        job_type=collection_scan_type(),
        heartbeat=0.05,
    )
    start = await scanner.start(root)
    calls: list[str] = []
    start_stage = store.start_stage

    async def flaky(job_id: str, stage: str, *, message: str | None = None) -> Any:
        calls.append(message or "")
        if len(calls) <= 2 and (message or "").startswith(f"walking {root}:"):
            raise RuntimeError("not a store error")  # a bug, or a driver's surprise
        return await start_stage(job_id, stage, message=message)

    monkeypatch.setattr(store, "start_stage", flaky)
    report = await scanner.run(start.job, start.collection)
    beats = [m for m in calls if m.startswith(f"walking {root}:")]
    assert len(beats) >= 5  # it went on beating after the two failures
    assert report.images == 1
