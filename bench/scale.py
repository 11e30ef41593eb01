"""The hybrid at scale: 10,000 to 100,000 jobs progressing at once, the
fallback cycle over 1,000,000 jobs with 10,000 of them stuck, and the
ledger's size per row.

Run through ``python -m bench.monitor --scale`` (``make bench SCALE=1``);
never by the tests. Results: bench/results/scale/scale.{json,md}.

Hybrid at scale, on PostgreSQL (a database of its own, dropped afterwards),
as a deployment runs it, one process per part:

- ``--workers`` worker processes, each with its own coalescing
  ``ProgressTracker`` on its own store: the items of every job are spread
  over them (item ``n`` of the run goes to worker ``n mod workers``) and
  each reports its share, shuffled, at an even pace over the window, with
  the item's key;
- one monitor process: ``Monitor`` in the fallback mode, a cycle a minute,
  stuck after 300 s, as deployed;
- this process: it loads the jobs, starts the others together, samples the
  PostgreSQL backends of the database (``/proc``: peak RSS, CPU), and reads
  the results.

A job's latency is from its last item (the latest ``time.time()`` at which
any worker reported one of its items) to the moment the worker whose flush
completed it had that flush's answer back (``add_progress`` returned with
the job completed), both on this machine's clock. Reported per process:
peak RSS (``ru_maxrss``) and its RSS before the run (after the imports, the
store's connection and the shuffled share), CPU seconds; per PostgreSQL
backend of the database: peak RSS (``VmHWM``, which counts the shared
buffers it touched) and its anonymous memory (``RssAnon``), CPU seconds.

What the server does meanwhile (:class:`WaitSampler`): every 50 ms, the
state of each active backend of the database and of the server's own
processes (``pg_stat_activity``: ``wait_event_type:wait_event``, ``CPU``
when it waits for nothing) and, when one waits for a lock, the relations
waited for (``pg_locks``); every second the machine's load average and CPU
split (``/proc/stat``). Each worker lists its flushes over 500 ms; the
flushes over 1 s are the run's *stalls*, and the states are reported in
and outside them, and second by second. The server's settings
(``SHOW``) and, on a private server, the checkpoints its log records go
with each run.

Servers (``--pg-config``, comma-separated, each run on all in turn):
``machine``, the machine's own server, or a private one started with the
settings of :data:`bench.pgserver.CONFIGS` (``machine-default``,
``production``; ``--pg-setting NAME=VALUE`` over them). ``--max-write``
and ``--free-first`` compare the trackers' entries per store call and the
store's ``free_first`` the same way.

Each configuration is ``JOBS[xITEMS[xWORKERS]]`` (``--scale-jobs``), all
at one item rate (``--rate``, items/s over all workers: the window is
jobs * items / rate), run one after another in each round, so that the
machine's load weighs on all of them alike.

The fallback cycle: ``--million`` jobs loaded with ``COPY`` (one stage
each; one in ``--stuck-every`` active, half of those not updated for a
day: stuck), the stuck query's plan (``EXPLAIN ANALYZE`` of the first
page), its time, and one whole cycle per ``--concurrency``, which claims,
reconciles and completes every stuck job (their one item was done; only
the count was lost), the stuck jobs put back before each.

The ledger: ``--ledger-items`` items added to one job's stage and counted
with their keys; ``pg_total_relation_size`` of ``job_items`` and
``item_keys`` per row.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

import psycopg

from bench.monitor import JOB_TYPE, STAGE, Counting, NoopReconciler, Produced
from bench.pgserver import CONFIGS, PrivateServer, private_server, settings_of
from bench.report import summary, table, write
from jobtrack.model import JobStatus
from jobtrack.monitor import CycleReport, Monitor
from jobtrack.store import JobStore, open_store
from jobtrack.store.base import ProgressResult, StageProgress
from jobtrack.store.postgres import PostgresJobStore
from jobtrack.store.postgres.store import _Q
from jobtrack.tracking import ProgressTracker

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the worker and monitor processes -------------------------------------------


class Recording:
    """A store that notes when each job's completion came back to this
    process, and how long each flush took."""

    backend: ClassVar[str] = "postgres"

    def __init__(self, store: JobStore, jobs: int) -> None:
        self._store = store
        self.completed = array("d", bytes(8 * (jobs + 1)))  # by job number; 0: not here
        self.flush_ms: list[float] = []
        self.flush_at: list[float] = []
        self.flush_entries: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def add_progress(self, batch: Sequence[StageProgress]) -> list[ProgressResult]:
        """The store's ``add_progress``, timed; completions noted."""
        self.flush_at.append(time.time())
        begin = time.perf_counter()
        results = await self._store.add_progress(batch)
        now = time.time()
        self.flush_ms.append((time.perf_counter() - begin) * 1000)
        self.flush_entries.append(len(batch))
        for result in results:
            if result.job_status is JobStatus.COMPLETED:
                self.completed[int(result.progress.job_id[1:])] = now
        return results


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _current_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    jobs, items, workers, index = spec["jobs"], spec["items"], spec["workers"], spec["index"]
    backend = open_store(spec["url"])
    if isinstance(backend, PostgresJobStore):
        backend.free_first = spec.get("free_first", False)
    store = Recording(backend, jobs)
    tracker = ProgressTracker(store, max_write=spec.get("max_write"))
    await store.get_job("j1")  # the connections opened before the start
    share = array("q", range(index, jobs * items, workers))
    random.Random(7 + index).shuffle(share)
    last_at = array("d", bytes(8 * (jobs + 1)))
    baseline_kb = _current_rss_kb()
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu = _cpu_s()
    every = max(1, len(share) // 2000)
    for n, item in enumerate(share):
        job = item // items + 1
        last_at[job] = time.time()
        tracker.add(f"j{job}", STAGE, item_key=str(item % items))
        if n % every == 0:  # keep to the window
            ahead = start_at + spec["window"] * n / len(share) - time.time()
            await asyncio.sleep(max(ahead, 0))
    produced_s = time.time() - start_at
    while tracker.pending:  # the last flushes as they come, not forced  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    await tracker.flush(max_wait=30)
    cpu = _cpu_s() - cpu
    await store.aclose()
    return {
        "index": index,
        "items": len(share),
        "produced_s": produced_s,
        "cpu_s": cpu,
        "rss_before_kb": baseline_kb,
        "rss_peak_kb": _rss_kb(),
        "flushes": len(store.flush_ms),
        "flush_ms": _percentiles(store.flush_ms),
        "flush_entries": _percentiles([float(n) for n in store.flush_entries]),
        # the slowest flushes: when each started (s after the start), ms, entries
        "slowest_flushes": sorted(
            zip(
                [at - start_at for at in store.flush_at],
                store.flush_ms,
                store.flush_entries,
                strict=True,
            ),
            key=lambda flush: -flush[1],
        )[:10],
        # every flush over 500 ms: when it started (s after the start), ms, entries
        "slow_flushes": [
            (at - start_at, ms, n)
            for at, ms, n in zip(store.flush_at, store.flush_ms, store.flush_entries, strict=True)
            if ms > 500
        ],
        "last_at": last_at.tolist(),
        "completed_at": store.completed.tolist(),
    }


async def _monitor(spec: dict[str, Any]) -> dict[str, Any]:
    store = Counting(open_store(spec["url"]))
    monitor = Monitor(store, [NoopReconciler(Produced(), spec["items"])], stuck_after=300.0)
    stop = asyncio.Event()
    baseline_kb = _current_rss_kb()
    cpu = _cpu_s()
    cycles: list[float] = []
    cycle = monitor.cycle

    async def timed() -> CycleReport:
        begin = time.perf_counter()
        cycles.append(time.time())
        try:
            return await cycle()
        finally:
            cycles.append(time.perf_counter() - begin)

    monitor.cycle = timed  # type: ignore[method-assign]
    task = asyncio.create_task(monitor.run(stop, interval=60.0))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the run is over
    stop.set()
    await task
    await store.aclose()
    return {
        "cpu_s": _cpu_s() - cpu,
        "rss_before_kb": baseline_kb,
        "rss_peak_kb": _rss_kb(),
        "store_calls": store.calls,
        "cycles": [
            {"at": at, "s": took} for at, took in zip(cycles[::2], cycles[1::2], strict=True)
        ],
    }


def _percentiles(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(samples)
    return {
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[max(0, int(len(ordered) * 0.99) - 1)],
        "max": ordered[-1],
    }


def child_main(role: str, spec_json: str, out: str) -> int:
    """A worker's or the monitor's process: run, then write its result to ``out``."""
    spec = json.loads(spec_json)
    result = asyncio.run(_worker(spec) if role == "worker" else _monitor(spec))
    Path(out).write_text(json.dumps(result), encoding="utf-8")
    return 0


# --- the PostgreSQL backends ---------------------------------------------------------


class _Sampling:
    """A sampler's thread: ``_run`` started on entering, stopped (``_stop``
    set) and joined on leaving."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class BackendSampler(_Sampling):
    """Samples the PostgreSQL backends of one database from ``/proc`` in a
    thread: per backend, its peak RSS, anonymous RSS and CPU seconds; and
    the server's checkpoints (when each was counted) and WAL written (the
    whole server's: other databases' too)."""

    def __init__(self, url: str, database: str) -> None:
        self._url, self._database = url, database
        self.backends: dict[int, dict[str, float]] = {}
        self.checkpoints_at: list[float] = []
        self.wal_bytes = 0
        super().__init__()

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            own = conn.info.backend_pid
            start_lsn = _one(conn, "SELECT pg_current_wal_lsn()")
            checkpoints = _one(conn, _CHECKPOINTS)
            while not self._stop.wait(0.25):
                if (now := _one(conn, _CHECKPOINTS)) != checkpoints:
                    checkpoints = now
                    self.checkpoints_at.append(time.time())
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                    (self._database, own),
                ).fetchall()
                for (pid,) in rows:
                    sample = _proc(pid)
                    if sample is not None:
                        seen = self.backends.setdefault(pid, sample)
                        for name, value in sample.items():
                            seen[name] = max(seen[name], value)
            self.wal_bytes = int(
                _one(conn, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start_lsn,))
            )

    def report(self, items: int, start_at: float) -> dict[str, Any]:
        """Per-backend peaks, the backends' CPU per item, the server's WAL
        per item and when its checkpoints were counted (s after ``start_at``)."""
        values = list(self.backends.values())
        cpu = sum(v["cpu_s"] for v in values)
        return {
            "server_wal_bytes_per_item": self.wal_bytes / items if items else 0.0,
            "server_checkpoints_at": [at - start_at for at in self.checkpoints_at],
            "backends": len(values),
            "hwm_kb": _percentiles([v["hwm_kb"] for v in values]),
            "anon_kb": _percentiles([v["anon_kb"] for v in values]),
            "cpu_s": cpu,
            "cpu_us_per_item": cpu / items * 1e6 if items else 0.0,
        }


_CHECKPOINTS = "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"


class WaitSampler(_Sampling):
    """Samples, every ``every`` seconds in a thread, what the server's
    processes are doing (``pg_stat_activity``: each active client backend
    of the database and each of the server's own processes, by
    ``wait_event_type:wait_event``, ``CPU`` when it waits for nothing),
    the relations of the locks waited for (``pg_locks``, only when a
    backend waits for a lock), and once a second the machine's load
    average and CPU split (``/proc/stat``: busy, iowait, steal)."""

    def __init__(self, url: str, database: str, every: float = 0.05) -> None:
        self._url, self._database, self._every = url, database, every
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.lock_waits: dict[str, int] = {}
        self.machine: list[dict[str, float]] = []
        super().__init__()

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            own = conn.info.backend_pid
            last_cpu, next_machine = _proc_stat(), time.time() + 1.0
            while not self._stop.wait(self._every):
                now = time.time()
                rows = conn.execute(_ACTIVITY, (own, self._database)).fetchall()
                counts: dict[str, int] = {}
                for backend_type, wait_type, wait_event in rows:
                    who = "client" if backend_type == "client backend" else backend_type
                    what = f"{wait_type}:{wait_event}" if wait_type else "CPU"
                    counts[f"{who} / {what}"] = counts.get(f"{who} / {what}", 0) + 1
                self.samples.append((now, counts))
                if any(" / Lock:" in key for key in counts):
                    for (relation,) in conn.execute(_LOCK_WAITS).fetchall():
                        self.lock_waits[relation] = self.lock_waits.get(relation, 0) + 1
                if now >= next_machine:
                    cpu = _proc_stat()
                    delta = [b - a for a, b in zip(last_cpu, cpu, strict=True)]
                    total = sum(delta) or 1
                    # /proc/stat cpu: user nice system idle iowait irq softirq steal
                    self.machine.append(
                        {
                            "at": now,
                            "load1": os.getloadavg()[0],
                            "busy": 1 - (delta[3] + delta[4]) / total,
                            "iowait": delta[4] / total,
                            "steal": delta[7] / total,
                        }
                    )
                    last_cpu, next_machine = cpu, now + 1.0

    def report(self, start_at: float, stalls: Sequence[tuple[float, float]]) -> dict[str, Any]:
        """The share of samples in which each kind of process was in each
        state, over the run and during ``stalls`` (intervals, s after
        ``start_at``, in which a flush took over a second); the lock waits'
        relations; per second, the backends' states and the machine's load."""

        def share(chosen: list[dict[str, int]]) -> dict[str, float]:
            total: dict[str, int] = {}
            for counts in chosen:
                for key, n in counts.items():
                    total[key] = total.get(key, 0) + n
            return {k: round(v / max(1, len(chosen)), 3) for k, v in sorted(total.items())}

        def stalled(at: float) -> bool:
            return any(begin <= at - start_at <= end for begin, end in stalls)

        during = [c for at, c in self.samples if stalled(at)]
        outside = [c for at, c in self.samples if not stalled(at) and at >= start_at]
        seconds: dict[int, list[dict[str, int]]] = {}
        for at, counts in self.samples:
            seconds.setdefault(int(at - start_at), []).append(counts)
        return {
            "every_s": self._every,
            "samples": len(self.samples),
            "samples_in_stalls": len(during),
            "mean_processes_outside_stalls": share(outside),
            "mean_processes_in_stalls": share(during),
            "lock_waits_by_relation": self.lock_waits,
            "per_second": [
                {"s": second, **share(chosen)} for second, chosen in sorted(seconds.items())
            ],
            "machine": [
                {"s": round(m["at"] - start_at, 1)}
                | {k: round(v, 3) for k, v in m.items() if k != "at"}
                for m in self.machine
            ],
        }


_ACTIVITY = (
    "SELECT backend_type, wait_event_type, wait_event FROM pg_stat_activity"
    " WHERE pid <> %s AND (datname = %s AND state = 'active'"
    " OR backend_type NOT IN ('client backend', 'autovacuum launcher',"
    " 'logical replication launcher'))"
)
_LOCK_WAITS = (
    "SELECT coalesce(l.relation::regclass::text, l.locktype) FROM pg_locks l WHERE NOT l.granted"
)


def _proc_stat() -> list[int]:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    return [int(n) for n in fields]


def _one(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _proc(pid: int) -> dict[str, float] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    ticks = stat.rsplit(")", 1)[1].split()
    return {
        "hwm_kb": float(fields["VmHWM"].split()[0]),
        "anon_kb": float(fields["RssAnon"].split()[0]),
        "cpu_s": (int(ticks[11]) + int(ticks[12])) / CLOCK_TICKS,
    }


# --- one hybrid run --------------------------------------------------------------------


def _copy_jobs(url: str, count: int, items: int, *, stuck_every: int = 0) -> None:
    """``count`` jobs ``j1``..``jN`` of one sealed no-op stage, loaded with
    ``COPY``. With ``stuck_every``, one job in ``stuck_every`` is active and
    half of those were last updated a day ago (stuck); the rest completed a
    day ago. Without it every job is active and fresh."""
    now = datetime.now(UTC)
    day = now - timedelta(days=1)
    with psycopg.connect(url, autocommit=True) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY jobs (id, job_type, status, created_at, updated_at, completed_at) FROM STDIN"
            ) as copy,
        ):
            for n in range(1, count + 1):
                active = not stuck_every or n % stuck_every == 0
                stuck = stuck_every and n % (2 * stuck_every) == 0
                if not active:
                    copy.write_row((f"j{n}", JOB_TYPE, "completed", day, day, day))
                else:
                    at = day if stuck else now
                    copy.write_row((f"j{n}", JOB_TYPE, "in_progress", at, at, None))
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY stages (job_id, name, position, status, total_items, total_final) FROM STDIN"
            ) as copy,
        ):
            for n in range(1, count + 1):
                if not stuck_every or n % stuck_every == 0:
                    copy.write_row((f"j{n}", STAGE, 0, "in_progress", items, True))
        conn.execute("ANALYZE jobs")
        conn.execute("ANALYZE stages")


def _spawn(role: str, spec: dict[str, Any], out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.scale", role, json.dumps(spec), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _active(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs"
            " WHERE job_type = %s AND status IN ('pending', 'in_progress')",
            (JOB_TYPE,),
        ).fetchone()
    return int(row[0]) if row else 0


def hybrid(
    url: str,
    database: str,
    *,
    jobs: int,
    items: int,
    workers: int,
    rate: float,
    with_monitor: bool = True,
    server: PrivateServer | None = None,
    max_write: int | None = None,
    free_first: bool = False,
) -> dict[str, Any]:
    """One hybrid run of ``jobs`` jobs of ``items`` items at ``rate`` items/s
    (``with_monitor``: and the monitor's process beside the workers), on
    the server of ``url``; ``server``: a private one, whose log's
    checkpoints are reported; ``max_write``: the workers' trackers' entries
    per store call (None: the tracker's default); ``free_first``: the
    workers' stores' ``free_first``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, stages, item_keys, job_events CASCADE")
    begin = time.perf_counter()
    _copy_jobs(url, jobs, items)
    setup_s = time.perf_counter() - begin
    window = jobs * items / rate
    load_before = os.getloadavg()
    settings = settings_of(url)
    with (
        tempfile.TemporaryDirectory() as folder,
        BackendSampler(url, database) as sampler,
        WaitSampler(url, database) as waits,
    ):
        spec = {"url": url, "jobs": jobs, "items": items, "workers": workers, "window": window}
        spec["max_write"] = max_write
        spec["free_first"] = free_first
        monitors = [_spawn("monitor", spec, Path(folder, "monitor.json"))] if with_monitor else []
        procs = [
            _spawn("worker", spec | {"index": i}, Path(folder, f"worker{i}.json"))
            for i in range(workers)
        ]
        for proc in [*monitors, *procs]:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        start_at = time.time() + 0.5
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at}\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.wait() == 0
        deadline = time.monotonic() + 120
        while _active(url) and time.monotonic() < deadline:
            time.sleep(0.2)
        monitored = None
        for monitor in monitors:
            assert monitor.stdin is not None
            monitor.stdin.close()
            assert monitor.wait() == 0
            monitored = json.loads(Path(folder, "monitor.json").read_text())
            for took in monitored["cycles"]:
                took["at"] -= start_at  # s after the start
        results = [json.loads(Path(folder, f"worker{i}.json").read_text()) for i in range(workers)]
    load_after = os.getloadavg()
    stalls = sorted(
        (at, at + ms / 1000) for r in results for at, ms, _ in r["slow_flushes"] if ms > 1000
    )
    last = [max(r["last_at"][j] for r in results) for j in range(1, jobs + 1)]
    seen = [max(r["completed_at"][j] for r in results) for j in range(1, jobs + 1)]
    latencies = sorted(s - t for s, t in zip(seen, last, strict=True) if s)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), sum(completed_items) FROM stages WHERE status = 'completed'"
        ).fetchone()
    assert row is not None
    total_items = jobs * items
    worker_cpu = sum(r["cpu_s"] for r in results)
    return {
        "jobs": jobs,
        "items_per_job": items,
        "max_write": max_write,
        "free_first": free_first,
        "workers": workers,
        "rate_target": rate,
        "window_s": window,
        "setup_s": setup_s,
        "load_before": load_before,
        "load_after": load_after,
        "completed": len(latencies),
        "completed_in_store": row[0],
        "items_counted": int(row[1] or 0),
        "exact": row[0] == jobs and int(row[1] or 0) == total_items,
        "latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
        "latency_p99_s": latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else None,
        "latency_max_s": latencies[-1] if latencies else None,
        "produced_s": max(r["produced_s"] for r in results),
        "worker_cpu_us_per_item": worker_cpu / total_items * 1e6,
        "workers_detail": [
            {k: v for k, v in r.items() if k not in ("last_at", "completed_at")} for r in results
        ],
        "monitor": monitored,
        "postgres": sampler.report(total_items, start_at),
        "server_settings": settings,
        "server_checkpoints": [
            c | {"completed_at": c["completed_at"] - start_at}  # type: ignore[operator]
            for c in (server.checkpoints(start_at - 60) if server else [])
        ],
        "stalls": stalls,
        "waits": waits.report(start_at, stalls),
    }


# --- the fallback cycle over a million jobs --------------------------------------------


async def fallback(
    url: str, *, jobs: int, stuck_every: int, concurrencies: Sequence[int], runs: int = 10
) -> dict[str, Any]:
    """The stuck query, its plan and one whole cycle over ``jobs`` jobs."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, stages, item_keys, job_events CASCADE")
    begin = time.perf_counter()
    _copy_jobs(url, jobs, 1, stuck_every=stuck_every)
    setup_s = time.perf_counter() - begin
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id FROM jobs"
            " WHERE status = 'in_progress' AND updated_at < now() - '1 hour'::interval"
        ).fetchall()
    stuck_ids = [row[0] for row in rows]
    threshold = datetime.now(UTC) - timedelta(seconds=300)
    params = {"job_type": JOB_TYPE, "before": threshold, "limit": 100}
    params |= {"after": datetime(1970, 1, 1, tzinfo=UTC), "after_id": ""}
    with psycopg.connect(url) as conn:
        plan = [
            row[0] for row in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + _Q["find_stuck"], params)
        ]
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            assert len(conn.execute(_Q["find_stuck"], params).fetchall()) == 100
            timings.append((time.perf_counter() - started) * 1000)
    produced = Produced()
    for job_id in stuck_ids:
        produced.done[job_id] = 1  # their one item was done; only the count was lost
    cycles = []
    for concurrency in concurrencies:
        _restuck(url, stuck_ids)
        cycles.append(await _cycle(url, produced, stuck_ids, concurrency))
        print("fallback cycle", cycles[-1], flush=True)
    return {
        "jobs": jobs,
        "active": jobs // stuck_every,
        "stuck": len(stuck_ids),
        "setup_s": setup_s,
        "stuck_query_ms": summary(timings),
        "stuck_query_plan": plan,
        "cycles": cycles,
    }


def _restuck(url: str, ids: list[str]) -> None:
    """The stuck jobs as loaded: active, their count lost, a day old."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET status = 'in_progress', completed_at = NULL,"
            " updated_at = now() - '1 day'::interval WHERE id = ANY(%s)",
            (ids,),
        )
        conn.execute(
            "UPDATE stages SET status = 'in_progress', completed_items = 0, completed_at = NULL"
            " WHERE job_id = ANY(%s)",
            (ids,),
        )
        conn.execute("DELETE FROM job_events")
        conn.execute("DELETE FROM item_keys")
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("VACUUM ANALYZE stages")


async def _cycle(
    url: str, produced: Produced, stuck_ids: list[str], concurrency: int
) -> dict[str, Any]:
    store = Counting(open_store(url))
    monitor = Monitor(
        store,
        [NoopReconciler(produced, 1)],
        stuck_after=300.0,
        concurrency=concurrency,
    )
    await store.get_job(stuck_ids[0])  # the connection opened before the clock starts
    calls = store.calls
    load_before = os.getloadavg()
    cpu = _cpu_s()
    started = time.perf_counter()
    report = await monitor.cycle()
    cycle_s = time.perf_counter() - started
    cpu = _cpu_s() - cpu
    assert (report.stuck, report.completed) == (len(stuck_ids), len(stuck_ids)), report
    await store.aclose()
    return {
        "concurrency": concurrency,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cycle_s": cycle_s,
        "ms_per_stuck_job": cycle_s * 1000 / len(stuck_ids),
        "client_cpu_s": cpu,
        "stuck_queries": report.queries,
        "store_calls": store.calls - calls,
        "completed": report.completed,
    }


# --- the ledger's size --------------------------------------------------------------------


async def ledger_size(url: str, *, items: int, batch: int = 10_000) -> dict[str, Any]:
    """Bytes per row of the ledger (``job_items``: a key and a small JSON
    payload each) and of the counted keys (``item_keys``), after ``items``
    items of one job's stage, from ``pg_total_relation_size`` (heap, indexes
    and TOAST) after a ``VACUUM``."""
    from bench.ledger import batches

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, stages, item_keys, job_events CASCADE")
        conn.execute("TRUNCATE job_items")
    store = open_store(url)
    job = await store.create_job(JOB_TYPE, [STAGE])
    for part in batches(items, batch, "random"):
        await store.add_items(job.id, STAGE, part)
    keys = [item.key for part in batches(items, batch, "random") for item in part]
    for start in range(0, items, batch):  # counted, the job left active (total not sealed)
        await store.add_progress(
            [StageProgress(job.id, STAGE, completed_keys=tuple(keys[start : start + batch]))]
        )
    await store.aclose()
    sizes: dict[str, Any] = {"items": items}
    with psycopg.connect(url, autocommit=True) as conn:
        for table_name in ("job_items", "item_keys"):
            conn.execute(f"VACUUM ANALYZE {table_name}")
            row = conn.execute(
                "SELECT count(*), pg_total_relation_size(%(t)s), pg_relation_size(%(t)s),"
                " pg_indexes_size(%(t)s) FROM " + table_name,
                {"t": table_name},
            ).fetchone()
            assert row is not None
            assert row[0] == items, row
            sizes[table_name] = {
                "total_bytes": row[1],
                "heap_bytes": row[2],
                "index_bytes": row[3],
                "bytes_per_row": row[1] / items,
            }
    return sizes


# --- the whole variant -------------------------------------------------------------------


@contextmanager
def _database() -> Iterator[tuple[str, str]]:
    from bench.progress import backend

    with backend("postgres") as url:
        yield url, url.rsplit("/", 1)[1]


async def _migrate(url: str) -> None:
    store = open_store(url)
    await store.list_jobs()
    await store.aclose()


Config = tuple[int, int, int, int]  # jobs, items per job, worker processes, monitor (1/0)


def parse_configs(text: str, *, items: int, workers: int) -> list[Config]:
    """``JOBS[xITEMS[xWORKERS[xMONITOR]]]``, comma-separated; what a config
    leaves out is ``items``, ``workers`` and 1 (a monitor process; 0: none)."""
    configs = []
    for part in text.split(","):
        numbers = [int(n) for n in part.split("x")]
        numbers += [items, workers, 1][len(numbers) - 1 :]
        configs.append((numbers[0], numbers[1], numbers[2], numbers[3]))
    return configs


def run(
    *,
    configs: Sequence[Config],
    rate: float,
    runs: int,
    million: int,
    stuck_every: int,
    concurrencies: Sequence[int],
    ledger_items: int,
    out: Path,
    pg_configs: Sequence[str] = ("machine",),
    pg_settings: Mapping[str, str] | None = None,
    max_writes: Sequence[int | None] = (None,),
    free_firsts: Sequence[bool] = (False,),
) -> dict[str, Any]:
    """The scale variant: hybrid runs interleaved (``runs`` rounds over
    ``configs``, each on every server of ``pg_configs``), then the fallback
    cycle and the ledger's size on the first; writes ``out``/scale.{json,md}.

    ``pg_configs`` names servers: ``machine``, the machine's own (a database
    of its own there, dropped afterwards), or a name of
    :data:`bench.pgserver.CONFIGS`, a private server started with those
    settings (and ``pg_settings`` over them), removed afterwards.

    ``max_writes``: the workers' trackers' entries per store call, each
    value a run of its own (None: the tracker's default); ``free_firsts``:
    the workers' stores' ``free_first``, each value a run of its own.

    :raises KeyError: a name of ``pg_configs`` is neither.
    """
    unknown = [name for name in pg_configs if name != "machine" and name not in CONFIGS]
    if unknown:
        raise KeyError(f"unknown server configurations: {unknown}; known: machine, {list(CONFIGS)}")
    samples: dict[str, list[dict[str, Any]]] = {
        _key(c, pg, w, f): []
        for pg in pg_configs
        for c in configs
        for w in max_writes
        for f in free_firsts
    }
    cycle: dict[str, Any] | None = None
    ledger: dict[str, Any] | None = None
    with ExitStack() as stack:
        servers: dict[str, tuple[str, str, PrivateServer | None]] = {}
        for name in pg_configs:
            if name == "machine":
                url, database = stack.enter_context(_database())
                servers[name] = (url, database, None)
            else:
                private = stack.enter_context(
                    private_server(CONFIGS[name] | dict(pg_settings or {}))
                )
                with psycopg.connect(private.url(), autocommit=True) as conn:
                    conn.execute("CREATE DATABASE jobtrack_bench")
                servers[name] = (private.url("jobtrack_bench"), "jobtrack_bench", private)
            asyncio.run(_migrate(servers[name][0]))
        for _ in range(runs):
            for jobs, items, workers, monitor in configs:
                for name, (url, database, server), max_write, free_first in (
                    (name, s, w, f)
                    for name, s in servers.items()
                    for w in max_writes
                    for f in free_firsts
                ):
                    result = hybrid(
                        url,
                        database,
                        jobs=jobs,
                        items=items,
                        workers=workers,
                        rate=rate,
                        with_monitor=bool(monitor),
                        server=server,
                        max_write=max_write,
                        free_first=free_first,
                    )
                    result["pg_config"] = name
                    config = (jobs, items, workers, monitor)
                    samples[_key(config, name, max_write, free_first)].append(result)
                    print(
                        "hybrid",
                        name,
                        max_write,
                        free_first,
                        jobs,
                        items,
                        workers,
                        {
                            k: v
                            for k, v in result.items()
                            if k not in ("workers_detail", "waits", "server_checkpoints")
                        },
                        flush=True,
                    )
        url = next(iter(servers.values()))[0]
        if million:
            cycle = asyncio.run(
                fallback(url, jobs=million, stuck_every=stuck_every, concurrencies=concurrencies)
            )
        ledger = asyncio.run(ledger_size(url, items=ledger_items)) if ledger_items else None
    command = "python -m bench.monitor " + " ".join(sys.argv[1:])
    data = {"command": command, "hybrid": samples, "fallback": cycle, "ledger": ledger}
    write("scale", data, _markdown(samples, cycle, ledger, command), out=out)
    return data


def _key(
    config: Config,
    pg_config: str = "machine",
    max_write: int | None = None,
    free_first: bool = False,
) -> str:
    key = "x".join(str(n) for n in config)
    key = key if pg_config == "machine" else f"{key}@{pg_config}"
    key = key if max_write is None else f"{key}/w{max_write}"
    return f"{key}/free-first" if free_first else key


def _mb(kb: float) -> str:
    return f"{kb / 1024:.0f}"


def _stalls_markdown(samples: dict[str, list[dict[str, Any]]]) -> str:
    """Per run: its stalls (flushes over 1 s), the checkpoints, and what the
    server's processes were doing in and out of the stalls."""
    text = ""
    for runs in samples.values():
        for n, r in enumerate(runs, 1):
            if "waits" not in r:
                continue
            waits = r["waits"]
            slow = sorted(
                (f for w in r["workers_detail"] for f in w.get("slow_flushes", [])),
                key=lambda f: f[0],
            )
            text += (
                f"\n### {r.get('pg_config', 'machine')}, {r['jobs']:,} jobs,"
                f" entries/call {r.get('max_write') or 'default'},"
                f" {'free first' if r.get('free_first') else 'one transaction'},"
                f" run {n}\n\n"
                f"Flushes over 1 s: {sum(1 for f in slow if f[1] > 1000)}"
                f" (of {sum(w['flushes'] for w in r['workers_detail']):,});"
                " the longest (s after the start, s, entries): "
                + ", ".join(
                    f"{at:.0f}: {ms / 1000:.1f} s, {entries:,}"
                    for at, ms, entries in sorted(slow, key=lambda f: -f[1])[:8]
                )
                + ". Checkpoints counted at (s): "
                + ", ".join(f"{at:.0f}" for at in r["postgres"]["server_checkpoints_at"])
                + "\n\n"
            )
            for c in r.get("server_checkpoints", []):
                text += f"    {c['completed_at']:.0f} s: {c['line']}\n"
            inside, outside = (
                waits["mean_processes_in_stalls"],
                waits["mean_processes_outside_stalls"],
            )
            keys = sorted(set(inside) | set(outside), key=lambda k: -inside.get(k, 0))
            text += (
                "\nProcesses in each state, mean per sample"
                f" (every {waits['every_s'] * 1000:.0f} ms; {waits['samples_in_stalls']:,}"
                f" samples in stalls, {waits['samples']:,} in all):\n\n"
                + table(
                    ["process / state", "in stalls", "outside"],
                    [[k, f"{inside.get(k, 0):.2f}", f"{outside.get(k, 0):.2f}"] for k in keys],
                )
            )
            if waits["lock_waits_by_relation"]:
                text += f"\nLocks waited for (samples): {waits['lock_waits_by_relation']}\n"
            machine = waits["machine"]
            if machine:
                loads = [m["load1"] for m in machine]
                text += (
                    f"\nMachine: load 1-min {min(loads):.1f} to {max(loads):.1f};"
                    f" CPU busy {sum(m['busy'] for m in machine) / len(machine):.0%},"
                    f" iowait {sum(m['iowait'] for m in machine) / len(machine):.0%} (means)\n"
                )
    return text


def _markdown(
    samples: dict[str, list[dict[str, Any]]],
    cycle: dict[str, Any] | None,
    ledger: dict[str, Any] | None,
    command: str,
) -> str:
    rows = []
    for runs in samples.values():
        for n, r in enumerate(runs, 1):
            workers = r["workers_detail"]
            rows.append(
                [
                    r.get("pg_config", "machine"),
                    r.get("max_write") or "default",
                    "free first" if r.get("free_first") else "one",
                    f"{r['jobs']:,}",
                    r["items_per_job"],
                    r["workers"],
                    n,
                    f"{r['rate_target']:,.0f} / {r['window_s']:.0f}",
                    f"{r['latency_p50_s']:.3f}",
                    f"{r['latency_p99_s']:.3f}",
                    f"{r['latency_max_s']:.3f}",
                    f"{r['completed']:,}" + ("" if r["exact"] else " (inexact)"),
                    f"{r['worker_cpu_us_per_item']:.1f} / {r['postgres']['cpu_us_per_item']:.1f}",
                    " · ".join(
                        f"{_mb(w['rss_before_kb'])}→{_mb(w['rss_peak_kb'])}" for w in workers
                    ),
                    f"{_mb(r['monitor']['rss_before_kb'])}→{_mb(r['monitor']['rss_peak_kb'])}"
                    if r["monitor"]
                    else "none",
                    f"{r['postgres']['backends']}: {_mb(r['postgres']['hwm_kb']['max'])}"
                    f" ({_mb(r['postgres']['anon_kb']['max'])} anon)",
                    " / ".join(f"{x:.2f}" for x in r["load_before"]),
                ]
            )
    text = (
        "# The hybrid at scale, and the fallback cycle over a million jobs\n\n"
        f"Command: `{command}`. PostgreSQL on the same 2-core machine as the"
        " processes; the machine was shared with other work (load averages below).\n\n"
        "Latency: a job's last item to its completion coming back to the worker that"
        " flushed it. CPU: µs per item in the workers / in the PostgreSQL backends."
        " Memory in MB: RSS before the run → peak; PostgreSQL: the backends, the"
        " largest peak (VmHWM, shared buffers touched included) and its anonymous part.\n\n"
        + table(
            [
                "server",
                "entries/call",
                "transactions",
                "jobs",
                "items/job",
                "workers",
                "run",
                "items/s / window s",
                "p50 (s)",
                "p99 (s)",
                "max (s)",
                "completed",
                "CPU µs/item",
                "workers RSS MB",
                "monitor RSS MB",
                "PG backends MB",
                "load 1/5/15",
            ],
            rows,
        )
    )
    text += _stalls_markdown(samples)
    if cycle is not None:
        plan = "\n".join("    " + line for line in cycle["stuck_query_plan"])
        text += (
            f"\n## Fallback cycle: {cycle['jobs']:,} jobs, {cycle['active']:,} active,"
            f" {cycle['stuck']:,} stuck\n\n"
            f"Loaded with COPY in {cycle['setup_s']:.1f} s. The stuck query (first page of"
            f" 100) takes {cycle['stuck_query_ms']['median']:.2f} ms (median of"
            f" {cycle['stuck_query_ms']['runs']}). One whole cycle claims, reconciles and"
            " completes every stuck job (the stuck jobs put back as loaded before each):\n\n"
            + table(
                [
                    "concurrency",
                    "cycle (s)",
                    "ms per stuck job",
                    "stuck queries",
                    "store calls",
                    "monitor CPU (s)",
                    "load 1/5/15 before",
                ],
                [
                    [
                        c["concurrency"],
                        f"{c['cycle_s']:.1f}",
                        f"{c['ms_per_stuck_job']:.2f}",
                        c["stuck_queries"],
                        f"{c['store_calls']:,}",
                        f"{c['client_cpu_s']:.1f}",
                        " / ".join(f"{x:.2f}" for x in c["load_before"]),
                    ]
                    for c in cycle["cycles"]
                ],
            )
            + "\nThe stuck query's plan (EXPLAIN ANALYZE, BUFFERS):\n\n"
            + plan
            + "\n"
        )
    if ledger is not None:
        text += f"\n## The ledger's size: {ledger['items']:,} items of one job's stage\n\n" + table(
            ["table", "bytes per row", "heap", "indexes", "total"],
            [
                [
                    f"`{name}`",
                    f"{ledger[name]['bytes_per_row']:.0f}",
                    f"{ledger[name]['heap_bytes'] / 2**20:.1f} MB",
                    f"{ledger[name]['index_bytes'] / 2**20:.1f} MB",
                    f"{ledger[name]['total_bytes'] / 2**20:.1f} MB",
                ]
                for name in ("job_items", "item_keys")
            ],
        )
    return text


if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1], sys.argv[2], sys.argv[3]))
