"""The HTTP API fuzzed in process (the ASGI app over a real SQLite store):
request bodies (JSON and not, wrong content types, oversize), path
parameters (unknown, malformed, unicode, ``..``, very long job ids) and
query strings (paging, limits, filters, repeated and unknown parameters)
of every route, with the token, a wrong one and none.

Every answer is below 500; a 4xx answer is JSON in the API's error shape
(``{"error": str, "detail"?: [...]}``), and a refused call writes nothing:
the database, dumped, is the same before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from starlette.types import ASGIApp, Message

from jobtrack import App, Item, JobType, Settings
from jobtrack.api.app import create_app
from jobtrack.api.config import ApiConfig
from jobtrack.api.security import MAX_BODY, LoopbackHostGuard
from jobtrack.model import JobStatus
from tests.fuzz.strategies import any_text, dumps, fuzz_settings, json_values

TOKEN = "fuzz-token-71c3"
T = TypeVar("T")


def _done(item: Item) -> None:
    """A handler that does nothing."""


@dataclass
class Served:
    """The API on an event loop of its own, driven one call at a time (its
    background tasks, the change feed's polls, run while a call does)."""

    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    api: ASGIApp
    database: Path
    job_ids: list[str]

    def run(self, work: Awaitable[T]) -> T:
        return self.loop.run_until_complete(work)

    def call(self, method: str, url: str, **options: Any) -> httpx.Response:
        return self.run(self.client.request(method, url, **options))

    def raw_call(
        self, app: ASGIApp, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        """Call ``app`` as a server would, with header bytes no client
        library would send; the status, headers and body of the answer."""
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        events: list[Message] = [
            {"type": "http.request", "body": body, "more_body": False},
            {"type": "http.disconnect"},
        ]
        sent: list[Message] = []

        async def receive() -> Message:
            return events.pop(0) if len(events) > 1 else events[0]

        async def send(message: Message) -> None:
            sent.append(message)

        self.run(app(scope, receive, send))
        start = sent[0]
        answer = b"".join(m.get("body", b"") for m in sent[1:])
        return start["status"], dict(start["headers"]), answer

    def dump(self) -> str:
        """A digest of every row of the database (store and catalog) but the
        workers' heartbeats: a scan started by an earlier call has its
        embedded runtime beat, and write its stop, on a clock of its own."""
        with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)) as db:
            text = "\n".join(
                line
                for line in db.iterdump()
                if not line.startswith(('INSERT INTO "workers"', 'INSERT INTO "worker_throughput"'))
            )
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def settle(self) -> None:
        """Let the work a call started run until it has ended (a scan of the
        empty root: every collection scan ended)."""

        async def idle() -> None:
            async with asyncio.timeout(20):
                while True:
                    with contextlib.closing(sqlite3.connect(self.database)) as db:
                        active = db.execute(
                            "SELECT count(*) FROM jobs WHERE job_type = 'collection-scan'"
                            " AND status IN ('pending', 'in_progress')"
                        ).fetchone()[0]
                    if not active:
                        return
                    await asyncio.sleep(0.05)

        self.run(idle())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("fuzz-api")
    root = folder / "root"
    root.mkdir()
    database = folder / "jobtrack.db"
    settings = Settings(data_dir=folder / "data", store_url=f"sqlite:///{database}")
    fuzzed = JobType("fuzzed", ["work"])
    fuzzed.handler("work")(_done)
    app = App(settings, job_types=[fuzzed])
    api = create_app(settings, ApiConfig(roots=(root.resolve(),), token=TOKEN), app=app)
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()

    async def start() -> Served:
        await stack.enter_async_context(api.router.lifespan_context(api))
        transport = httpx.ASGITransport(app=api)
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
        )
        store = api.state.parts.store
        running = await store.create_job("fuzzed", ["work"])
        ended = await store.create_job("fuzzed", ["work"])
        await store.end_job(ended.id, JobStatus.CANCELLED)
        return Served(loop, client, api, database, [running.id, ended.id])

    try:
        yield loop.run_until_complete(start())
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()


#: What a 409 to a cancel says besides its error (``CancelRefusedOut``).
CANCEL_REFUSED = {"error", "outcome", "cancelled", "ended_as", "message", "job"}


def assert_answer(served: Served, method: str, response: httpx.Response, before: str) -> None:
    """The property every answer keeps."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json")
        if method != "HEAD":
            body = response.json()
            assert isinstance(body, dict)
            if response.status_code == 409 and "outcome" in body:  # a cancel of an ended job
                assert set(body) == CANCEL_REFUSED
                assert body["outcome"] == "ended"
            else:
                assert set(body) <= {"error", "detail"}
            assert isinstance(body["error"], str)
            assert body["error"]
            assert isinstance(body.get("detail", []), list)
        assert served.dump() == before, "a refused call wrote to the store"
    else:
        served.settle()


def raw(text: str) -> str:
    """``text`` percent-encoded as a path segment or query value (a lone
    surrogate as the bytes it would have in UTF-8)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


tokens = st.sampled_from([TOKEN, None, "wrong", "", f"{TOKEN} ", "x" * 10_000])
job_ids = st.one_of(
    st.sampled_from(["0", "..", ".", "%2e%2e", "a%2Fb", "%00", "%ED%A0%80", "%FF", "x" * 20_000]),
    any_text.map(raw),
    st.text(st.sampled_from("0123456789abcdef"), min_size=32, max_size=32),
    st.just("EXISTING"),
)
queries = st.lists(
    st.tuples(
        st.sampled_from(["limit", "offset", "status", "job_type", "cursor", "", "x"]),
        st.one_of(
            any_text.map(raw),
            st.integers().map(str),
            st.sampled_from(["pending", "cancelled", "1e3", "%zz", "%", "9" * 5000, "-1", ""]),
        ),
    ),
    max_size=4,
).map(lambda pairs: "&".join(f"{key}={value}" for key, value in pairs))
routes = st.sampled_from(
    [
        ("GET", "/api/jobs"),
        ("GET", "/api/jobs/{id}"),
        ("GET", "/api/jobs/{id}/events"),
        ("GET", "/api/jobs/{id}/failures"),
        ("GET", "/api/events"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/"),
        ("GET", "/docs"),
        ("GET", "/static/{id}"),
        ("GET", "/static/swagger/{id}"),
        ("POST", "/api/jobs/{id}/cancel"),
        ("POST", "/api/jobs/{id}/retry"),
        ("POST", "/api/scans"),
        ("GET", "/api/queues"),
        ("GET", "/api/queues/{id}/dead"),
        ("POST", "/api/queues/{id}/dead/requeue"),
        ("POST", "/api/queues/{id}/dead/drop"),
        ("PUT", "/api/jobs/{id}"),
        ("DELETE", "/api/jobs/{id}"),
        ("HEAD", "/api/jobs"),
        ("OPTIONS", "/api/scans"),
        ("GET", "/{id}"),
    ]
)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "application/json; charset=nope",
    ]
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(dumps),
    st.fixed_dictionaries({"path": json_values | any_text}).map(dumps),
    st.fixed_dictionaries({"path": any_text}, optional={"extra": json_values}).map(dumps),
    st.sampled_from(
        [
            b'{"path": "."}',
            b'{"path": ".."}',
            b'{"path": "/"}',
            b'{"path": "/etc"}',
            b'{"path": "../../etc"}',
            b'{"path": "\\u0000"}',
            b'{"path": "\\ud800"}',
            b'{"path": "' + b"a/" * 3000 + b'"}',
            b"[" * 10_000,
            b"x" * (MAX_BODY + 1),
        ]
    ),
)


@dataclass(frozen=True)
class Call:
    """One call of the API: its route, the job id in its path, its query
    string, its body and content type, and the bearer token it carries."""

    route: tuple[str, str]
    job_id: str
    query: str
    body: bytes | None
    content_type: str | None
    token: str | None

    def send(self, served: Served) -> httpx.Response:
        method, template = self.route
        chosen = self.job_id
        if chosen == "EXISTING":  # the running job or the ended one
            chosen = served.job_ids[len(self.query) % 2]
        url = template.replace("{id}", chosen) + (f"?{self.query}" if self.query else "")
        headers = {}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        return served.call(method, url, content=self.body, headers=headers)


calls = st.builds(
    Call,
    route=routes,
    job_id=job_ids,
    query=queries,
    body=bodies,
    content_type=content_types,
    token=tokens,
)


@fuzz_settings(max_examples=400)
@given(call=calls)
@example(
    call=Call(
        ("POST", "/api/scans"),
        "EXISTING",
        "",
        b'{"path": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "application/json",
        TOKEN,
    )
)
@example(call=Call(("GET", "/api/jobs/{id}"), "%ED%A0%80", "", None, None, TOKEN))
@example(call=Call(("POST", "/api/jobs/{id}/cancel"), "EXISTING", "x", None, None, TOKEN))
@example(call=Call(("POST", "/api/jobs/{id}/retry"), "EXISTING", "", None, None, TOKEN))
def test_every_answer_is_below_500_and_a_refusal_writes_nothing(served: Served, call: Call) -> None:
    before = served.dump()
    response = call.send(served)
    event(f"{call.route[0]} {call.route[1]} {response.status_code}")
    assert_answer(served, call.route[0], response, before)


@fuzz_settings(max_examples=150)
@given(
    status=st.none() | st.sampled_from(["pending", "cancelled"]) | any_text,
    job_type=st.none() | st.just("fuzzed") | any_text,
    limit=st.none() | st.integers(min_value=-5, max_value=300) | st.just(2**70),
    offset=st.none() | st.integers(min_value=-5, max_value=20_000_000) | st.just(-(2**70)),
)
def test_the_jobs_page_filters_and_limits(
    served: Served,
    status: str | None,
    job_type: str | None,
    limit: int | None,
    offset: int | None,
) -> None:
    params = {
        name: raw(str(value))
        for name, value in (
            ("status", status),
            ("job_type", job_type),
            ("limit", limit),
            ("offset", offset),
        )
        if value is not None
    }
    query = "&".join(f"{name}={value}" for name, value in params.items())
    before = served.dump()
    response = served.call("GET", f"/api/jobs?{query}")
    assert_answer(served, "GET", response, before)
    if response.status_code == 200:
        page = response.json()
        assert len(page["jobs"]) <= page["limit"] <= 200
        assert all(job["job_type"] == job_type for job in page["jobs"] if job_type is not None)


scan_paths = st.one_of(
    any_text,
    st.lists(st.sampled_from(["..", ".", "", "root", "data", "etc", "\x00", "é"]), max_size=6).map(
        "/".join
    ),
    st.sampled_from(["/", "/etc", "/proc/self/root", "~", "\\..\\..", "x" * 5000]),
)


@fuzz_settings(max_examples=200)
@given(
    path=scan_paths,
    extra=st.sampled_from([None, None, None])
    | st.dictionaries(any_text, json_values, min_size=1, max_size=2),
    content_type=st.sampled_from(["application/json"] * 3) | content_types,
)
@example(path="../..", extra=None, content_type="application/json")
@example(path="\x00", extra=None, content_type="application/json")
@example(path="/" + "a/" * 2000, extra=None, content_type="application/json")
def test_a_scan_request_is_refused_in_the_error_shape_or_started(
    served: Served, path: str, extra: dict[str, Any] | None, content_type: str | None
) -> None:
    body = dumps({"path": path} | (extra or {}))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    before = served.dump()
    response = served.call("POST", "/api/scans", content=body, headers=headers)
    event(f"POST /api/scans {response.status_code}")
    assert_answer(served, "POST", response, before)


def test_a_scan_of_the_root_is_accepted_and_runs_to_its_end(served: Served) -> None:
    before = served.dump()
    response = served.call(
        "POST", "/api/scans", json={"path": "."}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 202, response.text
    served.settle()
    assert served.dump() != before
    shown = served.call("GET", f"/api/jobs/{response.json()['id']}")
    assert shown.json()["status"] == "completed"
    assert json.loads(shown.text)["job_type"] == "collection-scan"


header_values = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(
        [
            b"9" * 5000,
            b"0" * 30 + b"2",
            b"-1",
            b" 2",
            b"127.0.0.1:" + b"9" * 5000,
            b"[::1",
            b"[::1]:80",
            b"localhost",
            b"localhost.",
            b"evil.example",
            b"127.0.0.1@evil",
            b"\xff\xfe",
            b"Bearer " + TOKEN.encode(),
            b"Bearer \xff",
            b"bearer  " + TOKEN.encode(),
        ]
    ),
)
raw_headers = st.lists(
    st.tuples(
        st.sampled_from(
            [b"host", b"content-length", b"authorization", b"content-type", b"last-event-id"]
        ),
        header_values,
    ),
    max_size=5,
)


@fuzz_settings(max_examples=300)
@given(
    headers=raw_headers,
    route=st.sampled_from(
        [("POST", "/api/scans"), ("GET", "/api/jobs"), ("POST", "/api/jobs/x/cancel")]
    ),
    body=st.binary(max_size=40) | st.just(b'{"path": "."}'),
    guarded=st.booleans(),
)
@example(  # int() of the length raised ValueError: a 500 without JSON
    headers=[(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-length", b"9" * 5000)],
    route=("POST", "/api/scans"),
    body=b"{}",
    guarded=False,
)
@example(
    headers=[(b"host", b"127.0.0.1:" + b"9" * 5000)],
    route=("GET", "/api/jobs"),
    body=b"",
    guarded=True,
)
def test_raw_header_bytes_are_answered_below_500(
    served: Served,
    headers: list[tuple[bytes, bytes]],
    route: tuple[str, str],
    body: bytes,
    guarded: bool,
) -> None:
    app = LoopbackHostGuard(served.api) if guarded else served.api
    before = served.dump()
    status, answer_headers, answer = served.raw_call(app, *route, headers, body)
    event(f"{route[0]} {route[1]} {status}")
    assert status < 500, answer
    if status >= 400:
        assert answer_headers[b"content-type"].startswith(b"application/json")
        error = json.loads(answer)
        assert isinstance(error["error"], str)
        assert served.dump() == before, "a refused call wrote to the store"
    else:
        served.settle()


def test_a_content_length_past_int_digits_is_413(served: Served) -> None:
    status, headers, answer = served.raw_call(
        served.api,
        "POST",
        "/api/scans",
        [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-length", b"9" * 5000)],
        b"{}",
    )
    assert (status, headers[b"content-type"]) == (413, b"application/json")
    assert json.loads(answer) == {"error": f"the request body is over {MAX_BODY} bytes"}
