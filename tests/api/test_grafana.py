"""The Grafana dashboard in ``docs/grafana/`` reads only what the server
exports: every metric its queries name is in a real ``jobtrack serve``'s
``/metrics`` (a family is listed there, by its ``# TYPE`` line, even while it
has no sample)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from jobtrack.pipeline.sample import generate_sample
from tests.api.server import running_server

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "jobtrack-dashboard.json"
METRIC = re.compile(r"\bjobtrack_[a-z0-9_]+\b")
# The series a family of these types exposes besides its own name.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every panel."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def _exported(text: str) -> set[str]:
    """Every series name the exposition text can carry."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names.add(family)
            names.update(family + suffix for suffix in SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_dashboard_is_a_grafana_dashboard_of_prometheus_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "jobtrack-overview"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    for title, expr in _queries(dashboard):
        assert METRIC.search(expr), f"{title!r}: {expr!r} names no jobtrack metric"
        assert expr.count("(") == expr.count(")"), f"{title!r}: {expr!r}"


@pytest.mark.parametrize("scan", [False, True], ids=["empty", "after-a-scan"])
def test_every_metric_the_dashboard_reads_is_exported(tmp_path: Path, scan: bool) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    with running_server(tmp_path) as server, server.client() as client:
        if scan:
            generate_sample(server.root / "album", count=6, broken=1, max_megapixels=0.3)
            started = client.post("/api/scans", json={"path": "album"})
            assert started.status_code == 202, started.text
            job_id = started.json()["id"]
            for _ in range(600):
                if client.get(f"/api/jobs/{job_id}").json()["status"] == "completed":
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the scan did not complete")
        response = client.get("/metrics")
    assert response.status_code == 200
    exported = _exported(response.text)
    missing = {
        name: title
        for title, expr in _queries(dashboard)
        for name in METRIC.findall(expr)
        if name not in exported
    }
    assert missing == {}
