"""RabbitMQ for the tests: a virtual host per test module (or test).

The server is ``$JOBTRACK_TEST_AMQP_URL`` (default: the local one, as
``guest``); virtual hosts are made and removed with ``rabbitmqctl``, which the
tests that restart the broker use too. Without a server the tests that need
one are skipped, and in CI (``$CI`` set) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

SERVER_URL = os.environ.get("JOBTRACK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
_PARTS = urlsplit(SERVER_URL)


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_server() -> None:
    """Skip (locally) or fail (in CI) without a RabbitMQ server and rabbitmqctl."""
    try:
        socket.create_connection((_PARTS.hostname or "127.0.0.1", _PARTS.port or 5672), 3).close()
    except OSError as exc:
        _unavailable(f"no RabbitMQ server at {_PARTS.hostname}:{_PARTS.port}: {exc}")
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is not on PATH")


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    """Run ``rabbitmqctl`` and return what it printed."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr}"
    return done.stdout


def vhost_url(vhost: str, **options: str) -> str:
    """The URL of ``vhost`` on the test server, with jobtrack's URL options."""
    url = f"{_PARTS.scheme}://{_PARTS.netloc}/{quote(vhost, safe='')}"
    if options:
        url += "?" + "&".join(f"{key}={value}" for key, value in options.items())
    return url


@contextmanager
def scratch_vhost(prefix: str) -> Iterator[str]:
    """A new virtual host the test user may use, deleted afterwards; yields its name."""
    name = f"jobtrack-{prefix}-{uuid.uuid4().hex[:8]}"
    user = _PARTS.username or "guest"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


def queues(vhost: str) -> dict[str, dict[str, Any]]:
    """The queues of ``vhost`` by name: durability, type, arguments, counts, consumers."""
    out = rabbitmqctl(
        "list_queues",
        "-p",
        vhost,
        "name",
        "durable",
        "type",
        "arguments",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "--formatter",
        "json",
    )
    return {row["name"]: row for row in json.loads(out or "[]")}


def restart_app(down_for: float = 1.0) -> None:
    """Stop the RabbitMQ application and start it again (the node stays up)."""
    rabbitmqctl("stop_app")
    time.sleep(down_for)
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup", timeout=120)
