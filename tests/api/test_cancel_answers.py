"""The cancel route's answer for each outcome of the cancel service, in
process (a busy job cannot be produced on demand through a real server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

import jobtrack.api.app as app_module
from jobtrack.api.app import create_app
from jobtrack.api.config import ApiConfig
from jobtrack.runtime import CancelOutcome, CancelResult, Settings
from jobtrack.store import JobStore

TOKEN = "t0ken-busy"


async def test_a_busy_job_is_a_409_to_try_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def busy(store: JobStore, job_id: str, **options: Any) -> CancelResult:
        return CancelResult(CancelOutcome.BUSY, await store.get_job(job_id), attempts=5)

    settings = Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path}/jobtrack.db")
    app = create_app(settings, ApiConfig(token=TOKEN))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        job = await app.state.parts.store.create_job("t", ["a"])
        monkeypatch.setattr(app_module, "cancel_job", busy)
        answer = await client.post(
            f"/api/jobs/{job.id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert (answer.status_code, answer.headers["retry-after"]) == (409, "1")
    body = answer.json()
    assert (body["outcome"], body["cancelled"], body["ended_as"]) == ("busy", False, None)
    assert body["error"] == (
        f"job {job.id} was written during each of 5 tries to cancel it: not cancelled, try again"
    )
    assert body["job"]["status"] == "pending"
