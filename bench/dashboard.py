"""The operator's page with 10,000 jobs and 100 workers in the store.

A store (SQLite, and PostgreSQL: a database of its own on the machine's
server, created and dropped) is seeded with 10,000 jobs of two job types:
``collection-scan`` (stages ``scan``, ``thumbnail``, ``cache``, its
collection's path searchable) and ``imports`` (one stage, ``rows``), of
which 1,000 are active (100 of them stuck: not written for two hours; 60
the monitor left waiting behind a backlog; 40 it is re-driving), 8,450
completed, 500 failed and 50 cancelled, each with its stages' counts; and
100 workers (90 live, 10 dead: their heartbeats stopped ten minutes ago)
whose heartbeats over the last hour fill the throughput chart. Everything is
written through the store's public methods (``create_job``,
``set_counts``, ``end_job``, ``add_event``, ``beat_worker``; on PostgreSQL
in 4 lanes at once, each a store of its own), with the store's clock set
back for what must look old; no bulk SQL: on this machine it takes about
10 s on SQLite and under a minute on PostgreSQL.

A real ``jobtrack serve`` (the built-in app, its in-process broker) then
runs on that store while this process keeps it moving as workers would:
the 90 live workers beat every 5 s with their counts, 20 increments a
second land on the active jobs, and a new job starts every 2 s. Measured:

- every request each view of the page makes, over HTTP: a warm-up, then
  ``--requests`` sequential requests each; median, p95 and max in ms
  (``/api/stream``: until its first snapshot has arrived whole);
- in chromium (Playwright): each view's time from navigation to its content
  drawn, then the requests the view makes in ``--watch`` seconds on it, by
  path: whether the jobs list is fetched again while the stream updates it.

The machine's load average is recorded at the start and end of each run.

Run: ``python -m bench.dashboard [--runs 3] [--backends sqlite,postgres]``.
Results: bench/results/dashboard/dashboard.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import Error, Request, sync_playwright

from bench.progress import backend
from bench.report import RESULTS, table, write
from bench.stream import serving
from jobtrack.api.stream import SNAPSHOT_LIMIT
from jobtrack.model import JobStatus, StageCounts
from jobtrack.store import JobStore, open_store
from jobtrack.store.workers import StageCount, WorkerBeat

OUT = RESULTS / "dashboard"
SCAN_STAGES: tuple[str, ...] = ("scan", "thumbnail", "cache")
IMPORT_STAGES: tuple[str, ...] = ("rows",)
JOBS, ACTIVE, STUCK, WAITING, REDRIVEN, FAILED, CANCELLED = 10_000, 1_000, 100, 60, 40, 500, 50
WORKERS, DEAD_WORKERS = 100, 10
INTERVAL = 5.0  # the live workers' heartbeat interval, seconds
HISTORY_EVERY = 60  # seconds between a worker's heartbeats over the past hour
STUCK_AFTER = 300  # the server's (the default)

#: Seconds after navigation past which a fetch of the jobs list would be a reload.
LATE = 2.0

#: The views of the page: the route, and the selector of its content.
VIEWS = {
    "overview": ("#/overview", "#overview-chart svg polyline"),
    "jobs": ("#/jobs", "#jobs tbody tr[data-job]"),
    "watch": ("#/watch", "#watch tbody tr[data-job]"),
    "queues": ("#/queues", "#queues-table tbody tr"),
    "workers": ("#/workers", "#workers-view tr.worker"),
}


class SettableClock:
    """The seeding store's clock: the real time, or a moment set back."""

    def __init__(self) -> None:
        self.at: datetime | None = None

    def __call__(self) -> datetime:
        return self.at if self.at is not None else datetime.now(UTC)


# ---- seeding ---------------------------------------------------------------


def _plan(seed: int) -> list[str]:
    """Each job's fate, oldest first: the active ones are the newest."""
    fates = ["completed"] * (JOBS - ACTIVE - FAILED - CANCELLED)
    fates += ["failed"] * FAILED + ["cancelled"] * CANCELLED
    random.Random(seed).shuffle(fates)
    active = ["stuck"] * STUCK + ["waiting"] * WAITING + ["redriven"] * REDRIVEN
    active += ["active"] * (ACTIVE - len(active))
    random.Random(seed + 1).shuffle(active)
    return fates + active


def _counts(stages: tuple[str, ...], fate: str, rng: random.Random) -> dict[str, StageCounts]:
    total = rng.randint(50, 2_000)
    counts = {}
    for n, stage in enumerate(stages):
        if fate == "completed":
            failed = rng.randint(0, 3)
            counts[stage] = StageCounts(total, total - failed, failed)
        elif fate in ("failed", "cancelled"):
            done = rng.randint(0, total // (n + 1))
            counts[stage] = StageCounts(total, done, rng.randint(0, 20))
        else:  # active: partway, the later stages behind
            done = rng.randint(0, total // (n + 1))
            counts[stage] = StageCounts(total, done, rng.randint(0, 5), total_final=n == 0)
    return counts


async def _seed_job(store: JobStore, n: int, fate: str, rng: random.Random) -> str:
    if n % 3:
        stages, job_type = SCAN_STAGES, "collection-scan"
        path = f"/photos/{rng.choice(['holidays', 'garden', 'family', 'work'])}_{n}"
        attributes: dict[str, Any] = {"collection": {"id": f"c{n}", "path": path}}
    else:
        stages, job_type, attributes = IMPORT_STAGES, "imports", {"file": f"batch-{n}.csv"}
    job = await store.create_job(job_type, stages, attributes=attributes)
    if fate == "completed":
        await store.set_counts(job.id, _counts(stages, fate, rng))
        if (await store.get_job(job.id)).status is not JobStatus.COMPLETED:
            await store.end_job(job.id, JobStatus.COMPLETED)
        return job.id
    await store.set_counts(job.id, _counts(stages, fate, rng))
    if fate == "failed":
        await store.end_job(job.id, JobStatus.FAILED, message="abandoned: no progress")
    elif fate == "cancelled":
        await store.end_job(job.id, JobStatus.CANCELLED, message="cancelled through the API")
    elif fate == "waiting":
        await store.add_event(
            job.id, "waiting", "a backlog of 120 items is being consumed; left alone", {}
        )
    elif fate == "redriven":
        await store.add_event(
            job.id, "redriven", "12 missing items published again, round 1 of 3", {}
        )
    return job.id


async def _seed_jobs(
    store: JobStore, clock: SettableClock, seed: int, lane: int, lanes: int
) -> list[str]:
    """This lane's share of the 10,000 jobs (every ``lanes``-th): created
    over the past day, the active ones in the last minutes (the stuck ones
    two hours ago); returns the active ids."""
    rng = random.Random(seed * 100 + lane)
    now = datetime.now(UTC)
    active: list[str] = []
    for n, fate in enumerate(_plan(seed)):
        if n % lanes != lane:
            continue
        if fate == "stuck":
            clock.at = now - timedelta(hours=2, seconds=(JOBS - n) * 0.1)
        elif n >= JOBS - ACTIVE:
            clock.at = now - timedelta(seconds=(JOBS - n) * 0.1)
        else:
            clock.at = now - timedelta(days=1) + timedelta(seconds=n * 8)
        job_id = await _seed_job(store, n, fate, rng)
        if fate in ("active", "waiting", "redriven"):
            active.append(job_id)
    clock.at = None
    return active


def _beat(n: int, at: datetime, started: datetime, done: int, failed: int) -> WorkerBeat:
    stages = ("thumbnail", "cache") if n % 2 else ("rows",)
    return WorkerBeat(
        worker_id=f"bench-worker-{n:03d}",
        host=f"host-{n % 10}",
        pid=10_000 + n,
        stages=stages,
        concurrency=4,
        prefetch=8,
        interval=INTERVAL,
        started_at=started,
        beat_at=at,
        done=done,
        failed=failed,
        last_error="OSError: cannot identify image file" if failed else None,
        last_error_at=at if failed else None,
    )


def _stage_counts(n: int, rng: random.Random) -> list[StageCount]:
    if n % 2:
        return [
            StageCount("collection-scan", "thumbnail", rng.randint(20, 60), rng.randint(0, 1)),
            StageCount("collection-scan", "cache", rng.randint(20, 60), 0),
        ]
    return [StageCount("imports", "rows", rng.randint(50, 150), rng.randint(0, 2))]


class Workers:
    """The 100 workers' heartbeats: an hour of history, then the live ones
    beating every :data:`INTERVAL` seconds."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.totals = [[0, 0] for _ in range(WORKERS)]
        self.started = datetime.now(UTC) - timedelta(hours=1, minutes=5)

    async def beat(self, store: JobStore, n: int, at: datetime) -> None:
        counts = _stage_counts(n, self.rng)
        self.totals[n][0] += sum(c.done for c in counts)
        self.totals[n][1] += sum(c.failed for c in counts)
        beat = _beat(n, at, self.started, *self.totals[n])
        await store.beat_worker(beat, counts)

    async def history(self, store: JobStore, lane: int, lanes: int) -> None:
        """This lane's workers' beats over the past hour, oldest first; the
        dead ones' stop ten minutes ago."""
        now = datetime.now(UTC)
        for back in range(3600, 0, -HISTORY_EVERY):
            at = now - timedelta(seconds=back)
            for n in range(lane, WORKERS, lanes):
                if n < DEAD_WORKERS and back < 600:
                    continue
                await self.beat(store, n, at + timedelta(seconds=n * 0.5))

    async def live(self, store: JobStore, stop: asyncio.Event) -> int:
        """Beat the live workers until ``stop``; returns the beats written."""
        beats = 0
        while not stop.is_set():
            for n in range(DEAD_WORKERS, WORKERS):
                await self.beat(store, n, datetime.now(UTC))
                beats += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), INTERVAL)
        return beats


async def _move(store: JobStore, active: list[str], stop: asyncio.Event) -> dict[str, int]:
    """What workers and scans do meanwhile: 20 increments a second on the
    active jobs' last stages, a new job every 2 s."""
    rng = random.Random(7)
    moved = {"increments": 0, "new_jobs": 0}
    tick = 0
    while not stop.is_set():
        for job_id in rng.sample(active, 2):
            with contextlib.suppress(Exception):  # a job that ended meanwhile
                await store.increment(job_id, "cache" if job_id[-1] < "8" else "thumbnail")
                moved["increments"] += 1
        tick += 1
        if tick % 20 == 0:
            await store.create_job("imports", IMPORT_STAGES, attributes={"file": "live.csv"})
            moved["new_jobs"] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    return moved


class Background:
    """The writers of :func:`_move` and :meth:`Workers.live`, in a thread of
    their own with their own event loop and store connection."""

    def __init__(self, url: str, workers: Workers, active: list[str]) -> None:
        self.url, self.workers, self.active = url, workers, active
        self.result: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        store = open_store(self.url)
        self._ready.set()
        try:
            moved, beats = await asyncio.gather(
                _move(store, self.active, self._stop), self.workers.live(store, self._stop)
            )
            self.result = {**moved, "beats": beats}
        finally:
            await store.aclose()

    def __enter__(self) -> Background:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


async def _seed(url: str, seed: int) -> tuple[list[str], Workers, dict[str, float]]:
    """Seed the store: on PostgreSQL in 4 lanes at once (a store, and so a
    clock, each), on SQLite (one writer at a time) in one."""
    lanes = 1 if url.startswith("sqlite") else 4
    clocks = [SettableClock() for _ in range(lanes)]
    stores = [open_store(url, clock=clock) for clock in clocks]
    workers = Workers(seed)
    try:
        started = time.perf_counter()
        found = await asyncio.gather(
            *(_seed_jobs(stores[n], clocks[n], seed, n, lanes) for n in range(lanes))
        )
        jobs_s = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(*(workers.history(stores[n], n, lanes) for n in range(lanes)))
        workers_s = time.perf_counter() - started
    finally:
        for store in stores:
            await store.aclose()
    active = [job_id for lane in found for job_id in lane]
    return active, workers, {"seed_jobs_s": jobs_s, "seed_workers_s": workers_s}


# ---- measuring -------------------------------------------------------------


def _requests(active_id: str) -> dict[str, str]:
    """Every request a view of the page makes (the jobs view's first page,
    a filter and two searches), by name."""
    return {
        "/": "/",
        "/api/jobs (first page)": "/api/jobs?limit=50&offset=0",
        "/api/jobs (status=failed)": "/api/jobs?status=failed&limit=50&offset=0",
        "/api/jobs (type=imports, active)": (
            "/api/jobs?status=active&type=imports&limit=50&offset=0"
        ),
        "/api/jobs (search: path)": "/api/jobs?q=holidays_99&limit=50&offset=0",
        "/api/jobs (search: id prefix)": f"/api/jobs?q={active_id[:8]}&limit=50&offset=0",
        "/api/jobs (page 100)": "/api/jobs?limit=50&offset=4950",
        "/api/overview": "/api/overview",
        "/api/watch": "/api/watch?limit=50&offset=0",
        "/api/watch (stuck)": "/api/watch?state=stuck&limit=50&offset=0",
        "/api/queues": "/api/queues",
        "/api/workers": "/api/workers",
        "/api/throughput": "/api/throughput?minutes=60",
        "/api/events": "/api/events?limit=20",
        "/metrics": "/metrics",
    }


def _snapshot_time(client: httpx.Client) -> tuple[float, int]:
    """Seconds until the stream's first snapshot has arrived whole, and its size."""
    started = time.perf_counter()
    with client.stream("GET", "/api/stream", headers={"Accept": "text/event-stream"}) as response:
        response.raise_for_status()
        buffer = b""
        for chunk in response.iter_bytes():
            buffer += chunk
            if b"event: snapshot" in buffer and b"\n\n" in buffer.split(b"event: snapshot", 1)[1]:
                return time.perf_counter() - started, len(buffer)
    raise AssertionError("the stream ended before its snapshot")


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(s * 1000 for s in samples)
    return {
        "median_ms": statistics.median(ordered),
        "p95_ms": ordered[max(0, round(len(ordered) * 0.95) - 1)],
        "max_ms": ordered[-1],
    }


def _http(url: str, active_id: str, count: int) -> dict[str, dict[str, float]]:
    timings: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, path in _requests(active_id).items():
            samples, size = [], 0
            for n in range(count + 3):  # three to warm up
                started = time.perf_counter()
                response = client.get(path)
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                size = len(response.content)
                if n >= 3:
                    samples.append(elapsed)
            timings[name] = {**_percentiles(samples), "bytes": size}
        samples = []
        for n in range(count + 3):
            elapsed, size = _snapshot_time(client)
            if n >= 3:
                samples.append(elapsed)
        timings["/api/stream (first snapshot)"] = {**_percentiles(samples), "bytes": size}
    return timings


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise SystemExit("no chromium on this machine: the browser part needs it")
    return found


def _note_error(errors: list[str], error: Error) -> None:
    errors.append(str(error))


def _note_request(seen: list[tuple[float, str, str]], request: Request) -> None:
    parts = urlsplit(request.url)
    seen.append((time.perf_counter(), parts.path, parts.query))


#: Counts the jobs table's rows added or replaced in place while watched.
#: (Times in ms since it started watching, one per row.)
_OBSERVE = """() => {
  window.__rowsChanged = [];
  const since = performance.now();
  const body = document.querySelector("#jobs tbody");
  new MutationObserver((records) => {
    const at = Math.round(performance.now() - since);
    for (const r of records) for (const n of r.addedNodes) window.__rowsChanged.push(at);
  }).observe(body, { childList: true });
}"""


def _browser(url: str, watch: float) -> dict[str, dict[str, Any]]:
    """Each view: navigation to content drawn, then ``watch`` seconds of its requests."""
    found: dict[str, dict[str, Any]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            for name, (route, selector) in VIEWS.items():
                page = browser.new_page(viewport={"width": 1300, "height": 800})
                errors: list[str] = []
                seen: list[tuple[float, str, str]] = []
                page.on("pageerror", partial(_note_error, errors))
                page.on("request", partial(_note_request, seen))
                started = time.perf_counter()
                page.goto(f"{url}/{route}")
                page.wait_for_selector(selector, timeout=30_000)
                drawn = time.perf_counter() - started
                loaded = Counter(path for _, path, _ in seen)
                page.evaluate(_OBSERVE)
                mark = time.perf_counter()
                page.wait_for_timeout(watch * 1000)
                after = Counter(path for at, path, _ in seen if at >= mark)
                found[name] = {
                    "drawn_ms": drawn * 1000,
                    "requests_during_load": dict(sorted(loaded.items())),
                    "watched_s": watch,
                    "requests_per_s": sum(after.values()) / watch,
                    "requests_by_path": dict(sorted(after.items())),
                    "jobs_list_refetched": after.get("/api/jobs", 0),
                    "job_rows_changed": page.evaluate("() => window.__rowsChanged.length"),
                    # When (seconds after navigation) the jobs list was fetched,
                    # the stream opened, and rows of the jobs table were drawn.
                    "jobs_fetched_at_s": [
                        [round(at - started, 2), query]
                        for at, path, query in seen
                        if path == "/api/jobs"
                    ],
                    "stream_opened_at_s": [
                        round(at - started, 2) for at, path, _ in seen if path == "/api/stream"
                    ],
                    "rows_drawn_at_s": [
                        round(mark - started + at / 1000, 2)
                        for at in page.evaluate("() => window.__rowsChanged")
                    ],
                    "page_errors": errors,
                }
                page.close()
        finally:
            browser.close()
    return found


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _one_run(name: str, run: int, args: argparse.Namespace) -> dict[str, Any]:
    load_start = _load()
    with backend(name) as url:
        active, workers, seeding = asyncio.run(_seed(url, seed=run))
        with (
            tempfile.TemporaryDirectory() as folder,
            serving(url, folder) as (server, _),
            Background(url, workers, active) as moving,
        ):
            time.sleep(2.0)  # the feed has caught up, the live workers have beaten
            http = _http(server, active[0], args.requests)
            views = _browser(server, args.watch)
        result = {
            "backend": name,
            "run": run,
            "load_start": load_start,
            "load_end": _load(),
            "seeding": seeding,
            "http": http,
            "views": views,
            "background": moving.result,
        }
    print(name, run, {k: round(v["p95_ms"], 1) for k, v in http.items()}, flush=True)
    return result


def _median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


def _markdown(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    names = list(results)
    first = results[names[0]][0]
    header = ["request"] + [f"{n} {m}" for n in names for m in ("median", "p95", "max")]
    rows = []
    for request in first["http"]:
        row: list[object] = [f"`{request}`"]
        for name in names:
            for measure in ("median_ms", "p95_ms", "max_ms"):
                row.append(f"{_median(results[name], 'http', request, measure):.1f}")
        rows.append(row)
    view_rows = []
    late = 0  # fetches of the jobs list later than LATE seconds after navigation
    for name in names:
        runs = results[name]
        for view in first["views"]:
            paths = Counter[str]()
            fetched, drawn_later = [], []
            for r in runs:
                shown = r["views"][view]
                paths.update(shown["requests_by_path"])
                after = [at for at, _ in shown["jobs_fetched_at_s"][1:]]  # past the first
                late += sum(1 for at in after if at > LATE)
                fetched.append(", ".join(f"{at:.1f}" for at in after) or "none")
                drawn_later.append(sum(1 for at in shown["rows_drawn_at_s"] if at > LATE))
            polled = ", ".join(f"{p} {c / len(runs):.1f}" for p, c in sorted(paths.items()))
            view_rows.append(
                [
                    name,
                    view,
                    f"{_median(runs, 'views', view, 'drawn_ms'):.0f}",
                    f"{_median(runs, 'views', view, 'requests_per_s'):.2f}",
                    " / ".join(fetched),
                    f"{statistics.median(drawn_later):.0f}",
                    polled,
                ]
            )
    view_header = [
        "store",
        "view",
        "drawn (ms)",
        "requests/s while watched",
        "`/api/jobs` fetched again (s after navigation; each run)",
        f"job rows drawn after {LATE:g} s",
        "requests while watched, by path (per run)",
    ]
    if late == 0:
        observed = (
            f"Observed: no view fetched `/api/jobs` later than {LATE:g} s after navigation in"
            " any run. The one fetch listed past the page's first comes right after the stream"
            " opens: the page loads its page again once when the stream's first snapshot says"
            f" it is incomplete (more than {SNAPSHOT_LIMIT:,} jobs active or written in the last"
            " minute, as here). The rows drawn after that came from the stream's events: a row"
            " replaced in place on a change, the table drawn again from memory (50 rows) when a"
            " new job goes to the top of the first page. The other requests are the views'"
            " polls (`/api/overview`, `/api/throughput`, `/api/watch`, `/api/queues` every 2 s,"
            " `/api/workers` every 1 s, `/api/events` every 5 s)."
        )
    else:
        observed = (
            f"Observed: {late} fetches of `/api/jobs` later than {LATE:g} s after navigation,"
            " over every run and view (see the table)."
        )
    loads = "; ".join(
        f"{name} run {r['run']}: {r['load_start'][0]:.2f} → {r['load_end'][0]:.2f}"
        for name in names
        for r in results[name]
    )
    seeding = "; ".join(
        f"{name}: jobs {_median(results[name], 'seeding', 'seed_jobs_s'):.0f} s,"
        f" worker history {_median(results[name], 'seeding', 'seed_workers_s'):.0f} s"
        for name in names
    )
    slowest = max(
        (_median(results[n], "http", r, "p95_ms"), f"{n} `{r}`")
        for n in names
        for r in first["http"]
    )
    return (
        "# The operator's page at 10,000 jobs and 100 workers\n\n"
        f"One `jobtrack serve` (built-in app, in-process broker) on a store of {JOBS:,} jobs"
        f" of 2 types ({ACTIVE:,} active: {STUCK} stuck, {WAITING} waiting, {REDRIVEN}"
        f" re-driven; {FAILED} failed, {CANCELLED} cancelled, the rest completed) and"
        f" {WORKERS} workers ({DEAD_WORKERS} dead) with an hour of throughput, seeded through"
        " the store's public methods (no bulk SQL), while 90 workers beat every 5 s,"
        " 20 increments a second land on active jobs and a job starts every 2 s."
        f" HTTP: {args.requests} sequential requests each after 3 to warm up, one client;"
        " the stream until its first snapshot has arrived whole. Browser: chromium,"
        f" navigation to the view's content drawn, then {args.watch:g} s on the view."
        f" Medians of {args.runs} runs; the max column is the median of the runs' maxima."
        f" Client, writers and server share the machine's {os.cpu_count()} cores with other"
        " work: 1-minute load average at each run's start → end: "
        f"{loads}.\n\n"
        f"Seeding time (median): {seeding}.\n\n"
        "## Requests (ms)\n\n"
        + table(header, rows)
        + f"\nSlowest p95: {slowest[0]:.1f} ms ({slowest[1]}).\n\n"
        "## Views in the browser\n\n"
        + table(view_header, view_rows)
        + f"\n{observed}\n\n`drawn`: from navigation to the view's content in the page,"
        f" median of the runs. While watched ({args.watch:g} s, after the content was drawn):"
        " the requests the page made, by path (the stream is one request, opened while the"
        " page loads); the fetches of `/api/jobs` past the page's first, each run's times;"
        f" the rows of the jobs table drawn later than {LATE:g} s after navigation (median)."
        " The jobs table is on the overview and jobs views and kept live, hidden, on the"
        " others.\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Seed, serve, measure; write bench/results/dashboard/dashboard.*
    (with ``--markdown``, only the markdown again, from the JSON there)."""
    parser = argparse.ArgumentParser(description="The operator's page at 10,000 jobs.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--watch", type=float, default=10.0)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--markdown", action="store_true", help="only rewrite the markdown")
    args = parser.parse_args(argv)
    if args.markdown:
        data = json.loads((args.out / "dashboard.json").read_text(encoding="utf-8"))
        for key in ("runs", "requests", "watch"):
            setattr(args, key, data.get("settings", {}).get(key, getattr(args, key)))
        args.runs = len(next(iter(data["runs"].values())))
        (args.out / "dashboard.md").write_text(_markdown(data["runs"], args), encoding="utf-8")
        return 0
    results: dict[str, list[dict[str, Any]]] = {}
    settings = {"runs": args.runs, "requests": args.requests, "watch": args.watch}
    for name in args.backends.split(","):
        results[name] = []
        for run in range(args.runs):
            results[name].append(_one_run(name, run, args))
            # What was measured so far, kept should a later run fail.
            partial = {"jobs": JOBS, "workers": WORKERS, "settings": settings, "runs": results}
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "dashboard.partial.json").write_text(json.dumps(partial), "utf-8")
    data = {"jobs": JOBS, "workers": WORKERS, "settings": settings, "runs": results}
    write("dashboard", data, _markdown(results, args), out=args.out)
    (args.out / "dashboard.partial.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
