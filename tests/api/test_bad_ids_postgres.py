"""Bad input on a PostgreSQL store is the caller's error (4xx), not the
store's (503): PostgreSQL text cannot hold a NUL character."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobtrack.errors import InvalidRequest
from jobtrack.store import open_store
from tests.api.server import Server, running_server
from tests.postgres import database_url, require_server, scratch_database


@pytest.fixture(scope="module")
def store_url() -> Iterator[str]:
    require_server()
    with scratch_database("bad_ids") as name:
        yield database_url(name)


@pytest.fixture(scope="module")
def server(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("bad-ids")
    with running_server(folder, extra=["--store", store_url]) as running:
        yield running


def test_a_nul_in_a_job_id_is_bad_input(server: Server) -> None:
    with server.client() as client:
        for method, path in (
            ("GET", "/api/jobs/%00"),
            ("GET", "/api/jobs/a%00b/events"),
            ("GET", "/api/jobs/%00/failures"),
            ("POST", "/api/jobs/%00/cancel"),
            ("POST", "/api/jobs/%00/retry"),
        ):
            answer = client.request(method, path)
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json() == {
                "error": "PostgreSQL refused the data: "
                "PostgreSQL text fields cannot contain NUL (0x00) bytes"
            }
        assert client.get("/healthz").status_code == 200


def test_a_nul_in_a_job_type_is_a_malformed_request(server: Server) -> None:
    with server.client() as client:
        answer = client.get("/api/jobs", params={"job_type": "\x00"})
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == "malformed request"
        assert [d["loc"] for d in answer.json()["detail"]] == [["query", "job_type"]]
        assert client.get("/api/jobs", params={"job_type": "a b"}).status_code == 200


async def test_the_store_calls_data_it_cannot_hold_an_invalid_request(store_url: str) -> None:
    store = open_store(store_url)
    try:
        with pytest.raises(InvalidRequest, match="cannot contain NUL"):
            await store.get_job("\x00")
    finally:
        await store.aclose()
