"""A setting that can never work stops the real command at once, with one
line that names the setting and masks the password (exit 2), instead of
being retried like an outage."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import postgres, rabbitmq

pytestmark = pytest.mark.timeout(120)

JOBTRACK = [sys.executable, "-m", "jobtrack"]
_AMQP = urlsplit(rabbitmq.SERVER_URL)
_SERVER = f"{_AMQP.hostname}:{_AMQP.port or 5672}"
WRONG_PASSWORD = f"amqp://{_AMQP.username}:wrong-secret@{_SERVER}/"
MISSING_VHOST = f"amqp://{_AMQP.username}:{_AMQP.password}@{_SERVER}/jobtrack-missing-vhost"
MISSING_DATABASE = postgres.database_url(f"jobtrack_missing_{uuid.uuid4().hex[:8]}")
_PG_BASE = postgres.ADMIN_URL.rsplit("/", 1)[0]
BAD_SSLMODE = f"{_PG_BASE}/postgres?sslmode=bogus"
BAD_PORT = "postgresql://postgres:wrong-secret@127.0.0.1:99999/postgres"
BROKER = "(check JOBTRACK_BROKER_URL / --broker)"
STORE = "(check JOBTRACK_STORE_URL / --store)"


def run(*args: str, data_dir: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "JOBTRACK_DATA_DIR": str(data_dir), "COLUMNS": "400"}
    for name in ("JOBTRACK_STORE_URL", "JOBTRACK_BROKER_URL"):
        env.pop(name, None)
    started = time.monotonic()
    done = subprocess.run(
        [*JOBTRACK, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    return done, time.monotonic() - started


@pytest.fixture(scope="module")
def services() -> None:
    rabbitmq.require_server()
    postgres.require_server()


@pytest.mark.parametrize(
    ("args", "names"),
    [
        pytest.param(["worker", "--broker", WRONG_PASSWORD], BROKER, id="worker-amqp-password"),
        pytest.param(["worker", "--broker", MISSING_VHOST], BROKER, id="worker-amqp-vhost"),
        pytest.param(
            ["worker", "--broker", "amqp://guest:wrong-secret@127.0.0.1:99999/"],
            BROKER,
            id="worker-amqp-port",
        ),
        pytest.param(
            ["worker", "--broker", f"{WRONG_PASSWORD}?queue_type=classic,{WRONG_PASSWORD}"],
            BROKER,
            id="worker-amqp-list-disagrees",
        ),
        pytest.param(
            ["worker", "--broker", rabbitmq.SERVER_URL, "--store", MISSING_DATABASE],
            STORE,
            id="worker-pg-database",
        ),
        pytest.param(
            ["worker", "--broker", rabbitmq.SERVER_URL, "--store", BAD_SSLMODE],
            STORE,
            id="worker-pg-sslmode",
        ),
        pytest.param(
            ["worker", "--broker", rabbitmq.SERVER_URL, "--store", BAD_PORT],
            STORE,
            id="worker-pg-port",
        ),
        pytest.param(["monitor", "--once", "--store", MISSING_DATABASE], STORE, id="monitor-pg-db"),
        pytest.param(["monitor", "--once", "--store", BAD_SSLMODE], STORE, id="monitor-pg-sslmode"),
        pytest.param(["monitor", "--store", BAD_PORT], STORE, id="monitor-pg-port"),
        pytest.param(["monitor", "--broker", WRONG_PASSWORD], BROKER, id="monitor-amqp-password"),
        pytest.param(
            ["serve", "--port", "0", "--store", MISSING_DATABASE], STORE, id="serve-pg-database"
        ),
        pytest.param(
            ["serve", "--port", "0", "--broker", MISSING_VHOST], BROKER, id="serve-amqp-vhost"
        ),
        pytest.param(["jobs", "list", "--store", MISSING_DATABASE], STORE, id="jobs-pg-database"),
    ],
)
def test_a_setting_that_cannot_work_exits_at_once_with_one_line(
    services: None, tmp_path: Path, args: list[str], names: str
) -> None:
    if args[0] == "worker" and "--store" not in args:
        args = [*args, "--store", f"sqlite:///{tmp_path / 'jobs.db'}"]
    done, took = run(*args, data_dir=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    assert lines[0].endswith(names)
    assert "wrong-secret" not in done.stderr
    assert took < 10, f"took {took:.1f} s"


def test_a_refused_login_on_the_next_node_of_a_list_exits_at_once(
    services: None, tmp_path: Path
) -> None:
    """The first node is down (an outage: logged, the next node tried at
    once); the second refuses the login: the command stops there."""
    broker = f"amqp://guest:wrong-secret@127.0.0.1:1/,{WRONG_PASSWORD}"
    done, took = run(
        "worker",
        "--broker",
        broker,
        "--store",
        f"sqlite:///{tmp_path / 'jobs.db'}",
        data_dir=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: RabbitMQ refused the login of user 'guest' at amqp://guest:***@")
    assert last.endswith(BROKER)
    assert "trying amqp://guest:***@" in done.stderr
    assert "wrong-secret" not in done.stderr
    assert took < 10, f"took {took:.1f} s"
