"""``jobtrack jobs list --search``, in a subprocess: a collection scan found
by its collection's path (the field the built-in type declares searchable)
or by its id's prefix, and a search term out of bounds refused in one line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from jobtrack.model import Job
from jobtrack.store import SqliteJobStore
from tests.acceptance.test_cli import run


def _scans(data_dir: Path) -> list[Job]:
    async def make() -> list[Job]:
        store = SqliteJobStore.open(str(data_dir / "jobtrack.db"))
        try:
            return [
                await store.create_job(
                    "collection-scan", ["scan"], attributes={"collection": {"id": i, "path": p}}
                )
                for i, p in (("c1", "/photos/Holidays 2026"), ("c2", "/photos/100%_garden"))
            ]
        finally:
            await store.aclose()

    return asyncio.run(make())


def _listed(data_dir: Path, *args: str) -> list[str]:
    done = run("jobs", "list", "--json", *args, data_dir=data_dir, check=True)
    return [job["id"] for job in json.loads(done.stdout)]


def test_jobs_are_found_by_path_or_id_prefix(tmp_path: Path) -> None:
    holidays, garden = _scans(tmp_path)

    assert _listed(tmp_path, "--search", "HOLIDAYS") == [holidays.id]
    assert _listed(tmp_path, "--search", "%_") == [garden.id]
    assert _listed(tmp_path, "--search", garden.id[:7]) == [garden.id]
    assert _listed(tmp_path, "--search", "photos", "--type", "other") == []
    refused = run("jobs", "list", "--search", "", data_dir=tmp_path)
    assert refused.returncode == 2
    assert "--search" in refused.stderr
