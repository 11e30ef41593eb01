"""Stream clients of ``GET /api/stream`` that the soak cuts and reconnects.

Each client keeps its own view of every job (the job's JSON, by id), as a
dashboard does: a ``snapshot`` event's jobs and each ``job`` event replace
what it held of those jobs when they are newer (a higher ``seq``). When
cut, it reconnects with ``Last-Event-ID``, the last event id it was sent,
and the server sends what it missed. At the end the soak compares each
client's view with the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import aconnect_sse

__all__ = ["StreamClient"]


@dataclass
class StreamClient:
    """One client of the server at ``base_url``; ``view`` its jobs by id."""

    number: int
    base_url: str
    rng: random.Random
    view: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_id: str | None = None
    connects: int = 0
    cuts: int = 0
    errors: int = 0
    events: int = 0
    _cut: asyncio.Event = field(default_factory=asyncio.Event)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def cut(self) -> None:
        """Cut the client's connection now (it reconnects shortly)."""
        self._cut.set()

    def stop(self) -> None:
        """End the client's loop (its view is kept)."""
        self._stop.set()
        self._cut.set()

    def take(self, kind: str, data: str) -> None:
        """Apply one event to the view."""
        self.events += 1
        if kind == "snapshot":
            jobs = json.loads(data)["jobs"]
        elif kind == "job":
            jobs = [json.loads(data)]
        else:
            return
        for job in jobs:
            held = self.view.get(job["id"])
            if held is None or job["seq"] >= held["seq"]:
                self.view[job["id"]] = job

    async def run(self) -> None:
        """Connect, read, reconnect after a cut or an error, until stopped."""
        async with httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(30.0)) as http:
            while not self._stop.is_set():
                self._cut.clear()
                reading = asyncio.create_task(self._read(http))
                cut = asyncio.create_task(self._cut.wait())
                await asyncio.wait({reading, cut}, return_when=asyncio.FIRST_COMPLETED)
                if cut.done() and not reading.done():
                    self.cuts += 1
                cut.cancel()
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
                if reading.done() and not reading.cancelled() and reading.exception() is not None:
                    self.errors += 1
                if not self._stop.is_set():
                    await asyncio.sleep(self.rng.uniform(0.1, 1.5))

    async def _read(self, http: httpx.AsyncClient) -> None:
        headers = {} if self.last_id is None else {"Last-Event-ID": self.last_id}
        async with aconnect_sse(http, "GET", "/api/stream", headers=headers) as source:
            source.response.raise_for_status()
            self.connects += 1
            async for event in source.aiter_sse():
                self.take(event.event, event.data)
                if event.id:
                    self.last_id = event.id
