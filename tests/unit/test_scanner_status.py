"""The walk's status helper survives any error reading the job: it logs it
(once per run of the same error, clipped) and keeps polling, so a cancel
still stops the walk."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import jobtrack.pipeline.scanner as scanner_module
from jobtrack.broker import InMemoryBroker
from jobtrack.errors import JobNotFound
from jobtrack.model import Job, JobStatus
from jobtrack.pipeline.catalog import InMemoryCatalog
from jobtrack.pipeline.scanner import Scanner
from jobtrack.runtime.builtin import collection_scan_type
from jobtrack.store import InMemoryJobStore

IMAGES = 12


async def test_errors_reading_the_job_do_not_stop_the_status_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for n in range(IMAGES):
        Image.new("RGB", (8, 8), "teal").save(root / f"{n:02}.jpg")
    real = scanner_module._next_batch

    def slow(entries: Iterator[Any], size: int, report: Any) -> Any:
        time.sleep(0.1)
        return real(entries, size, report)

    monkeypatch.setattr(scanner_module, "_next_batch", slow)
    store = InMemoryJobStore()
    scanner = Scanner(
        store=store,
        catalog=InMemoryCatalog(),
        broker=InMemoryBroker(),
        job_type=collection_scan_type(),
        batch_size=1,
        status_interval=0.01,
    )
    start = await scanner.start(root)
    await store.end_job(start.job.id, JobStatus.CANCELLED, message="cancelled by the user")
    get_job = store.get_job
    failures: list[Exception] = [
        *(JobNotFound(start.job.id) for _ in range(3)),
        *(RuntimeError("x" * 5000) for _ in range(3)),
    ]

    async def flaky(job_id: str) -> Job:
        if failures:
            raise failures.pop(0)
        return await get_job(job_id)

    monkeypatch.setattr(store, "get_job", flaky)
    with caplog.at_level(logging.WARNING, logger="jobtrack.pipeline.scanner"):
        report = await scanner.run(start.job, start.collection)
    assert report.ended is JobStatus.CANCELLED
    assert report.images < IMAGES  # the walk stopped
    assert failures == []
    lines = [r for r in caplog.records if r.__dict__.get("action") == "scan_status_unread"]
    prefix = f"scan status of job {start.job.id} not read: "
    assert [r.getMessage() for r in lines] == [
        f"{prefix}JobNotFound: job '{start.job.id}' not found",
        prefix + ("RuntimeError: " + "x" * 5000)[:500],
    ]
