"""A user's app served as an ASGI application: its jobs listed, a failed
item read through its job type, a mutating call refused without the token."""

from __future__ import annotations

from pathlib import Path

import httpx

from jobtrack import App, Item, JobType, Settings


def _nothing(item: Item) -> None:
    """A handler that does nothing."""


async def test_an_apps_asgi_application_serves_its_jobs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path}/jobtrack.db")
    imports = JobType("imports", ["rows"])
    imports.handler("rows")(_nothing)
    app = App(settings, job_types=[imports])
    api = app.asgi(token="s3cret")
    transport = httpx.ASGITransport(app=api)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        store = api.state.parts.store
        job = await store.create_job("imports", ["rows"])
        await store.raise_total(job.id, "rows", by=2)
        await store.increment(job.id, "rows", item_key="a")
        await store.increment(job.id, "rows", failed=1, item_key="b")
        await store.record_failure(job.id, "rows", "b", "ValueError: bad row")
        listed = await client.get("/api/jobs")
        shown = await client.get(f"/api/jobs/{job.id}")
        failures = await client.get(f"/api/jobs/{job.id}/failures")
        refused = await client.post(f"/api/jobs/{job.id}/cancel")
    assert listed.status_code == 200
    assert [entry["id"] for entry in listed.json()["jobs"]] == [job.id]
    assert shown.status_code == 200
    rows = shown.json()["stages"]["rows"]
    assert (rows["total_items"], rows["completed_items"], rows["failed_items"]) == (2, 1, 1)
    assert failures.status_code == 200
    assert failures.json()["failures"] == [
        {"image": "b", "stages": ["rows"], "error": "ValueError: bad row"}
    ]
    assert refused.status_code == 401
