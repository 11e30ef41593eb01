"""``jobtrack queues`` and ``jobtrack dead list|requeue|drop``: the real
command line, in a subprocess, on a user's app against RabbitMQ (a virtual
host of this test) and a SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobtrack import App, Settings
from jobtrack.broker import Delivery
from jobtrack.jobs.messages import ItemMessage, encode_item
from tests import rabbitmq

pytestmark = pytest.mark.timeout(120)

JOBTRACK = [sys.executable, "-m", "jobtrack"]
QUEUE = "jobtrack.imports.rows"
REASON = "rejected by the test"

USER_APP = '''
"""A user's app with one job type, ``imports``, whose ``rows`` stage has a queue."""

from jobtrack.runtime import App

app = App()
imports = app.job_type("imports", ["rows"])


@imports.handler("rows")
def rows(item):
    """Does nothing."""
'''


@pytest.fixture
def vhost() -> Iterator[str]:
    """A RabbitMQ virtual host for this test alone."""
    rabbitmq.require_server()
    with rabbitmq.scratch_vhost("queues_cli") as name:
        yield name


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JOBTRACK, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def as_json(env: dict[str, str], *args: str) -> Any:
    done = run(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def prepare(settings: Settings) -> str:
    """A job of ``imports`` in a new store, and three of its items dead-lettered
    (one whose body is not an item at all); the job's id."""
    app = App(settings)
    app.job_type("imports", ["rows"])
    async with app:
        job = await app.store.create_job("imports", ["rows"])
        bodies = [
            encode_item(ItemMessage(job.id, "imports", "rows", key, None)) for key in ("a", "b")
        ] + [b"not an item"]
        seen: asyncio.Queue[bytes] = asyncio.Queue()

        async def reject(delivery: Delivery) -> None:
            await delivery.nack(requeue=False, reason=REASON)
            seen.put_nowait(delivery.body)

        await app.broker.publish_many(QUEUE, bodies)
        subscription = await app.broker.consume(QUEUE, reject, prefetch=1)
        async with asyncio.timeout(20):
            for _ in bodies:
                await seen.get()
        await subscription.cancel()
        return job.id


def test_queues_and_dead_letters_from_the_command_line(tmp_path: Path, vhost: str) -> None:
    (tmp_path / "myqueues.py").write_text(USER_APP, encoding="utf-8")
    broker_url = rabbitmq.vhost_url(vhost)
    store_url = f"sqlite:///{tmp_path}/jobtrack.db"
    settings = Settings(data_dir=tmp_path, store_url=store_url, broker_url=broker_url)
    job_id = asyncio.run(prepare(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]),
        "JOBTRACK_APP": "myqueues:app",
        "JOBTRACK_STORE_URL": store_url,
        "JOBTRACK_BROKER_URL": broker_url,
        "JOBTRACK_DATA_DIR": str(tmp_path),
        "COLUMNS": "200",
    }

    [row] = as_json(env, "queues")
    assert (row["queue"], row["messages"], row["consumers"], row["dead_letters"]) == (
        QUEUE,
        0,
        0,
        3,
    )
    assert (row["unacked"], row["oldest_seconds"]) == (None, None)
    table = run(env, "queues")
    assert table.returncode == 0
    assert QUEUE in table.stdout

    [listed] = as_json(env, "dead", "list")
    assert listed["queue"] == QUEUE
    letters = {entry["key"]: entry for entry in listed["dead_letters"]}
    assert set(letters) == {"a", "b", None}
    assert letters["a"]["job_id"] == job_id
    assert letters["a"]["reason"] == REASON
    assert [
        e["id"] for e in as_json(env, "dead", "list", QUEUE, "--limit", "1")[0]["dead_letters"]
    ] == [listed["dead_letters"][0]["id"]]
    shown = run(env, "dead", "list", QUEUE)
    assert shown.returncode == 0
    assert letters["a"]["id"] in shown.stdout

    unknown = run(env, "dead", "drop", QUEUE, letters["a"]["id"], "no-such-id")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [
        f"Error: no dead letter no-such-id in {QUEUE}.dead"
    ]
    neither = run(env, "dead", "drop", QUEUE)
    assert neither.returncode == 2
    other = run(env, "dead", "list", "jobtrack.other.rows")
    assert other.returncode == 1
    assert "no queue 'jobtrack.other.rows'" in other.stderr
    memory = run(env, "queues", "--broker", "memory://")
    assert memory.returncode == 2
    assert "memory://" in memory.stderr
    assert as_json(env, "queues")[0]["dead_letters"] == 3  # nothing changed

    sent = as_json(env, "dead", "requeue", QUEUE, letters["a"]["id"])
    assert [d["id"] for d in sent["requeued"]] == [letters["a"]["id"]]
    assert sent["remaining"] == 2
    [row] = as_json(env, "queues")
    assert (row["messages"], row["dead_letters"]) == (1, 2)

    dropped = as_json(env, "dead", "drop", QUEUE, "--all")
    assert sorted(d["id"] for d in dropped["dropped"]) == sorted(
        [letters["b"]["id"], letters[None]["id"]]
    )
    assert dropped["remaining"] == 0
    [row] = as_json(env, "queues")
    assert (row["messages"], row["dead_letters"]) == (1, 0)

    shown_job = as_json(env, "jobs", "show", job_id)
    kinds = [(e["kind"], e["message"]) for e in shown_job["events"]]
    assert [kind for kind, _ in kinds] == ["requeued", "dropped"]
    assert letters["a"]["id"] in kinds[0][1]
    assert "command line" in kinds[0][1]
    assert letters["b"]["id"] in kinds[1][1]
