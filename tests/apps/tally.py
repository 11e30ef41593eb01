"""A user app for the scale and fault tests: ``--app tests.apps.tally:app``.

Job type ``tally``: each ``work`` item takes ``payload["seconds"]``
(default 0), fails when its payload says ``fail`` (a ValueError, not
retried), raises a retryable ``ConnectionError`` while its attempt is below
``payload["flaky"]`` (so ``flaky`` past ``max_attempts`` fails for good),
and adds ``payload["parts"]`` items to the discovered stage ``extra``.
"""

from __future__ import annotations

import time

from jobtrack.jobs import Item
from jobtrack.runtime import App

#: Tries of an item before a retried error fails it.
MAX_ATTEMPTS = 3

app = App()
tally = app.job_type(
    "tally", ["work", "extra"], retry_on=[ConnectionError], max_attempts=MAX_ATTEMPTS, backoff=0.0
)


@tally.handler("work", feeds=["extra"])
def work(item: Item) -> None:
    """Do a ``work`` item as its payload says (see the module)."""
    payload = item.payload or {}
    time.sleep(payload.get("seconds", 0))
    if payload.get("fail"):
        raise ValueError(f"told to fail {item.key}")
    if item.attempt < payload.get("flaky", 0):
        raise ConnectionError(f"flaky {item.key} (attempt {item.attempt})")
    for part in range(payload.get("parts", 0)):
        item.add("extra", f"{item.key}/{part}", {"of": item.key})


@tally.handler("extra")
async def extra(item: Item) -> None:
    """Nothing to do: the item counts."""
