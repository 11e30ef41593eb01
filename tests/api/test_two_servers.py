"""Two API processes on one PostgreSQL store: each streams every change,
whoever wrote it (each polls the store's change feed; no bus between them)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource, connect_sse

from jobtrack.store import open_store
from tests.api.server import Server, running_server
from tests.api.test_api import wait_for
from tests.postgres import database_url, require_server, scratch_database


@pytest.fixture(scope="module")
def store_url() -> Iterator[str]:
    require_server()
    with scratch_database("two_servers") as name:
        yield database_url(name)


def _follow(source: EventSource, into: list[dict[str, Any]]) -> None:
    with contextlib.suppress(httpx.HTTPError, httpx.StreamError):
        for event in source.iter_sse():
            if event.event == "job":
                into.append(json.loads(event.data))


async def test_each_server_streams_every_change(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url)
    await store.list_jobs()  # migrated before the servers start
    with contextlib.ExitStack() as stack:
        servers: list[Server] = [
            stack.enter_context(running_server(tmp_path / name, extra=["--store", store_url]))
            for name in ("one", "two")
        ]
        received: list[list[dict[str, Any]]] = [[], []]
        for server, into in zip(servers, received, strict=True):
            client = stack.enter_context(
                httpx.Client(base_url=server.url, timeout=httpx.Timeout(5, read=None))
            )
            source = stack.enter_context(connect_sse(client, "GET", "/api/stream"))
            threading.Thread(target=_follow, args=(source, into), daemon=True).start()
        # A job made through the first server's API, moved by a worker (here).
        with servers[0].client() as client:
            assert client.get("/healthz").status_code == 200
        job = await store.create_job("shared", ["a"])
        for _ in range(3):
            await store.increment(job.id, "a")
        for into in received:

            def done(into: list[dict[str, Any]] = into) -> bool:
                return any(
                    j["id"] == job.id and j["stages"]["a"]["completed_items"] == 3 for j in into
                )

            wait_for(done, within=10)
        # And a cancel through the second server reaches the first one's clients.
        with servers[1].client() as client:
            assert client.post(f"/api/jobs/{job.id}/cancel").json()["cancelled"] is True

        def cancelled() -> bool:
            return any(j["id"] == job.id and j["status"] == "cancelled" for j in received[0])

        wait_for(cancelled, within=10)
    await store.aclose()
