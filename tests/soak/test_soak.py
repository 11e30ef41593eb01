"""A two-minute chaos soak (fixed seed) whose end state is exact.

It runs :func:`tests.soak.run.run_soak` on a private PostgreSQL server and
RabbitMQ node of its own; without them (no server binaries, no rights to
run them) it is skipped, and in CI (``$CI`` set) it fails instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.soak.checks import HOSTILE_FAILED, HOSTILE_GOOD
from tests.soak.run import ServicesUnavailable, plan_for, run_soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

#: The schedule of the CI soak (every kind of fault it can inject comes up).
SEED = 7


def test_a_two_minute_soak_under_faults_ends_exact(tmp_path: Path) -> None:
    plan = plan_for(2, SEED)
    try:
        report = run_soak(plan, tmp_path / "soak")
    except ServicesUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the soak's private services cannot start: {exc}")
        pytest.skip(f"the soak's private services cannot start: {exc}")

    assert [check for check in report["checks"] if not check["ok"]] == []
    assert report["ok"] is True
    total = plan.jobs * plan.items
    items = report["items"]
    assert (items["expected"], items["done_distinct"]) == (total, total)
    assert (items["lost"], items["counted_twice"]) == (0, 0)
    jobs = report["jobs"]
    assert jobs["by_status"] == {"completed": jobs["total"]}
    assert jobs["total"] == plan.jobs + report["scans"]["jobs"]
    assert report["scans"]["jobs"] >= 1
    assert report["scans"]["expected"]["thumbnail"] == [
        HOSTILE_GOOD + HOSTILE_FAILED,
        HOSTILE_GOOD,
        HOSTILE_FAILED,
    ]
    for kind in ("worker_kill", "stream_cut", "rabbitmq_restart", "postgres_restart"):
        row = report["faults"][kind]
        assert row["injected"] >= 1, kind
        assert row["recovered"] == row["injected"], (kind, report["fault_log"])
        assert row["survived"] == row["injected"], kind
    pause = report["faults"]["worker_pause"]
    assert pause["injected"] + pause["skipped"] >= 1
    assert pause["recovered"] == pause["injected"]
    assert report["latency"]["all"]["jobs"] == plan.jobs
    assert report["clients"]["count"] == plan.clients
    assert report["clients"]["connects"] > plan.clients  # every client was cut at least once

    written = json.loads((tmp_path / "soak" / "soak.json").read_text())
    assert written["items"] == items
    assert (tmp_path / "soak" / "soak.md").read_text().startswith("# Chaos soak: passed")
