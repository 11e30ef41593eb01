"""schemathesis against the OpenAPI document: generated calls to every
operation (with the token, and without it) never get a 5xx, and every answer
matches the document (status, content type, body schema)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from jobtrack.pipeline.sample import generate_sample
from tests.api.server import TOKEN, Server, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("openapi")) as running:
        generate_sample(running.root / "album", count=4, broken=1, max_megapixels=0.2)
        yield running


def test_every_operation_keeps_to_the_document(server: Server) -> None:
    # Driven by hand rather than with schemathesis's pytest plugin, which
    # does not run under this pytest.
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        if operation.path == "/api/stream":
            continue  # an endless response: tested on its own

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def calls(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(
                base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            case.call_and_validate(base_url=server.url)  # no token: 401s, as documented

        calls()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert sorted(checked) == [
        "GET /api/events",
        "GET /api/jobs",
        "GET /api/jobs/{job_id}",
        "GET /api/jobs/{job_id}/events",
        "GET /api/jobs/{job_id}/failures",
        "GET /api/overview",
        "GET /api/queues",
        "GET /api/queues/{queue}/dead",
        "GET /api/throughput",
        "GET /api/watch",
        "GET /api/workers",
        "GET /healthz",
        "GET /metrics",
        "POST /api/jobs/{job_id}/cancel",
        "POST /api/jobs/{job_id}/retry",
        "POST /api/queues/{queue}/dead/drop",
        "POST /api/queues/{queue}/dead/requeue",
        "POST /api/scans",
    ]
