"""The cancel route's answers that a real server cannot produce on demand,
in process: a job cancelled whose event the store then fails to record."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobtrack.api.app import create_app
from jobtrack.api.config import ApiConfig
from jobtrack.errors import StoreUnavailable
from jobtrack.model import JobEvent
from jobtrack.runtime import Settings

TOKEN = "t0ken-cancel"


async def test_a_cancel_whose_event_is_lost_still_answers_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(
        job_id: str, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> JobEvent:
        raise StoreUnavailable("database is locked")

    settings = Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path}/jobtrack.db")
    app = create_app(settings, ApiConfig(token=TOKEN))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        store = app.state.parts.store
        job = await store.create_job("t", ["a"])
        monkeypatch.setattr(store, "add_event", refused)
        answer = await client.post(
            f"/api/jobs/{job.id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert (await store.get_job(job.id)).status.value == "cancelled"
    assert answer.status_code == 200
    body = answer.json()
    assert (body["outcome"], body["cancelled"], body["ended_as"]) == ("cancelled", True, None)
    assert (body["message"], body["job"]["status"]) == (f"job {job.id} cancelled", "cancelled")
    assert "retry-after" not in answer.headers
