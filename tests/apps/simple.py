"""A small user app: ``jobtrack worker --app tests.apps.simple:app``.

Job type ``simple``: each ``fetch`` item (thread) adds ``payload["parts"]``
items to ``store`` (worker processes), and fails when its payload says
``fail``; each item takes ``payload["seconds"]`` (default 0).
"""

from __future__ import annotations

import time

from jobtrack.jobs import Item
from jobtrack.runtime import App

app = App()
simple = app.job_type("simple", ["fetch", "store"], max_attempts=2, backoff=0.0)


@simple.handler("fetch", feeds=["store"])
def fetch(item: Item) -> None:
    """Add the item's parts to ``store``; fail when told to."""
    payload = item.payload or {}
    time.sleep(payload.get("seconds", 0))
    if payload.get("fail"):
        raise ValueError(f"told to fail {item.key}")
    for part in range(payload.get("parts", 0)):
        item.add("store", f"{item.key}/{part}", {"seconds": payload.get("seconds", 0)})


@simple.handler("store", executor="process")
def store(item: Item) -> None:
    """Take the item's time, in a worker process."""
    time.sleep((item.payload or {}).get("seconds", 0))
