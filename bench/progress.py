"""Benchmark: progress writes per second on SQLite and PostgreSQL.

Usage::

    python -m bench.progress [--duration 1.0] [--runs 3] [--backends sqlite,postgres]
                             [--writers 1,4,16] [--paced-only]

For 1, 4 and 16 writer processes, on one hot job and spread over 1,000 jobs,
each writer increments one stage for ``--duration`` seconds, in these ways:

floor
    a bare ``UPDATE stages SET completed_items = completed_items + 1`` loop on
    the same table, one connection per process: the database's own ceiling.
per-item, per-item+key
    ``ProgressTracker(coalesce=False).increment``: one store write per item,
    as the seed describes (without and with item keys).
coalesced, coalesced+key
    ``ProgressTracker.add``: items folded in memory and written once per
    flush (100 ms), keys deduplicated in the same write. The rate counts an
    item once it is durable; staleness is the time from ``add`` to durable
    (sampled on every 64th item). Unpaced, the writers report as fast as
    they can, so staleness there is the backlog's.
coalesced+key@RATE (PostgreSQL, 16 writers)
    the paced cases, whose staleness is the one that matters: the writers
    together offer RATE items a second, with keys. On one hot job they
    offer 100,000 (the target: at least 95,000 get through, staleness p99
    under 500 ms); spread over 1,000 jobs, 50,000 (at least 47,500, p99
    under 500 ms). ``--paced-only`` runs these two alone.

Every configuration checks that the store's final count is exactly the sum
the writers report. Last, 16 writers run the seed's read-modify-write
(read the count, add one, write it back) on one row, implemented here alone,
to show how many updates it loses.

PostgreSQL runs in a database of its own, created and dropped here, on
``$JOBTRACK_BENCH_POSTGRES_URL`` (default: the local server).

Where the time of a keyed flush goes (PostgreSQL, 16 writers, measured on
the 2-core machine of the results, shared with other work):

- Hot job, before ``0006_keys_before_locks.sql``: sampled every 10 ms,
  about 6.4 of the 8 busy backends waited for the job's row lock
  (``Lock/tuple``) and one ran. Under that lock, a flush of 625 keys took
  11.5 ms in ``jobtrack_add``, all but 0.5 ms of it the key ``INSERT …
  ON CONFLICT DO NOTHING`` (the same flush without keys: 0.54 ms), so the
  writers' keys went through the lock one flush after another. One key
  costs, 625 to a statement: ``ON CONFLICT`` 26 µs, a plain ``INSERT``
  16.5 µs, the heap row alone 7.4 µs, an index on (bigint, key) instead of
  (job, stage, key) 21.8 µs (one connection, the machine loaded). Keys are
  now claimed before the job lock, with a plain ``INSERT`` unless one is
  there already; the waits moved to ``Lock/extend`` (16 backends growing
  ``item_keys`` at once; PostgreSQL 15 adds its pages one at a time) and
  to CPU.
- Spread, before: ``jobtrack_add_many`` was one statement of eleven CTEs
  planned on every call: about 6 ms a call before any row (31 stages took
  8.4 ms, 312 took 32 ms; the statement itself 15 ms of the 22 ms). Now a
  few small statements: 312 stages about 25% quicker, 31 stages 35%.
  But every item still costs a key row, a stage row update and a job row
  update: in 100 ms one writer reports about 312 items for 312 different
  jobs, so nothing coalesces, and the 16 writers walk the jobs in step, so
  their flushes lock the same jobs one after another.
- The writers: psycopg quoted every element of a text array parameter with
  a regular expression (7.5 µs an element against 1.5 µs in binary, which
  ``add_many`` now uses); ``ProgressTracker.add`` made a receipt per item
  (now one per stage and flush). Their CPU per item is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.report import RESULTS, summary, table, write
from jobtrack.store import open_store
from jobtrack.tracking import ProgressTracker

ADMIN_URL = os.environ.get(
    "JOBTRACK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MODES = ("floor", "per-item", "per-item+key", "coalesced", "coalesced+key")
SPREAD_JOBS = 1000
PACED_HOT = 100_000
PACED_SPREAD = 50_000
STAGE = "a"


@dataclass(frozen=True, slots=True)
class Task:
    """What one writer process does."""

    url: str
    mode: str
    job_ids: tuple[str, ...]
    writer: int
    start_at: float
    duration: float
    writers_total: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one writer process reports."""

    items: int
    seconds: float
    staleness: tuple[float, ...]
    cpu: float = 0.0  # the process's CPU seconds from the start to the end


_FLOOR = "UPDATE stages SET completed_items = completed_items + 1 WHERE job_id = %s AND name = %s"


async def _floor(task: Task) -> Outcome:
    """The bare UPDATE, in the conditions of the store: inside an event loop,
    an async connection for PostgreSQL, sqlite3 on the loop's thread for SQLite."""
    jobs = task.job_ids
    if task.url.startswith("sqlite"):
        conn = sqlite3.connect(task.url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA synchronous = NORMAL")
        sql = _FLOOR.replace("%s", "?")
        _wait_until(task.start_at)
        end, items = task.start_at + task.duration, 0
        while time.time() < end:
            conn.execute(sql, (jobs[items % len(jobs)], STAGE))
            items += 1
        return Outcome(items, time.time() - task.start_at, ())
    pg = await psycopg.AsyncConnection.connect(task.url, autocommit=True)
    _wait_until(task.start_at)
    end, items = task.start_at + task.duration, 0
    while time.time() < end:
        await pg.execute(_FLOOR, (jobs[items % len(jobs)], STAGE), prepare=True)
        items += 1
    await pg.close()
    return Outcome(items, time.time() - task.start_at, ())


async def _tracked(task: Task) -> Outcome:
    store = open_store(task.url)
    coalesce = task.mode.startswith("coalesced")
    keyed = "+key" in task.mode
    # "coalesced+key@100000": the writers together report that many items a second.
    paced = int(task.mode.split("@")[1]) if "@" in task.mode else 0
    tracker = ProgressTracker(store, coalesce=coalesce, flush_interval=0.1, log_every=10**9)
    jobs = task.job_ids
    staleness: list[float] = []
    await store.get_job(jobs[0])  # connect before the clock starts
    _wait_until(task.start_at)
    cpu = time.process_time()
    end, items = task.start_at + task.duration, 0
    while time.time() < end:
        job = jobs[items % len(jobs)]
        key = f"{task.writer}-{items}" if keyed else None
        if not coalesce:
            await tracker.increment(job, STAGE, item_key=key)
        else:
            receipt = tracker.add(job, STAGE, item_key=key)
            if items % 64 == 0:
                receipt.add_done_callback(_stopwatch(staleness))
            if paced and items % 50 == 0:
                # This writer's share of the paced rate, in steps of 50 items.
                due = task.start_at + items / (paced / task.writers_total)
                await asyncio.sleep(max(0.0, due - time.time()))
            elif items % 256 == 0:
                await asyncio.sleep(0)  # let the flusher run
        items += 1
    flushed = await tracker.flush(max_wait=60)
    seconds = time.time() - task.start_at
    cpu = time.process_time() - cpu
    await store.aclose()
    assert flushed
    return Outcome(items, seconds, tuple(staleness), cpu)


def _stopwatch(into: list[float]) -> Callable[[bool], None]:
    """A callback that records the seconds from now until it is called."""
    started = time.perf_counter()
    return lambda _durable: into.append(time.perf_counter() - started)


def _read_modify_write(task: Task) -> Outcome:
    """The seed's increment: read the count, add one in memory, write it back."""
    conn = psycopg.connect(task.url, autocommit=True)
    _wait_until(task.start_at)
    end, items = task.start_at + task.duration, 0
    while time.time() < end:
        row = conn.execute(
            "SELECT completed_items FROM stages WHERE job_id = %s AND name = %s",
            (task.job_ids[0], STAGE),
        ).fetchone()
        assert row is not None
        conn.execute(
            "UPDATE stages SET completed_items = %s WHERE job_id = %s AND name = %s",
            (row[0] + 1, task.job_ids[0], STAGE),
        )
        items += 1
    return Outcome(items, time.time() - task.start_at, ())


def work(task: Task) -> Outcome:
    """Runs in a writer process."""
    if task.mode == "floor":
        return asyncio.run(_floor(task))
    if task.mode == "read-modify-write":
        return _read_modify_write(task)
    return asyncio.run(_tracked(task))


def _started(_: int) -> int:
    """Imports the PostgreSQL store: mapped over the pool once, so that every
    writer process has started and imported before the first configuration
    sets its clock (each call lasts long enough that every process takes one)."""
    import jobtrack.store.postgres  # noqa: F401 - imported on first use otherwise

    time.sleep(0.2)
    return os.getpid()


def _wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


@contextmanager
def backend(name: str) -> Iterator[str]:
    """A fresh store of the named backend; yields its URL."""
    if name == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    database = f"jobtrack_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + database
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


async def _new_jobs(url: str, count: int) -> tuple[str, ...]:
    store = open_store(url)
    ids = tuple([(await store.create_job("bench", [STAGE])).id for _ in range(count)])
    await store.aclose()
    return ids


async def _total(url: str, job_ids: tuple[str, ...]) -> int:
    store = open_store(url)
    total = 0
    for start in range(0, len(job_ids), 100):
        for job in await _jobs(store, job_ids[start : start + 100]):
            total += job
    await store.aclose()
    return total


async def _jobs(store: Any, ids: tuple[str, ...]) -> list[int]:
    return [(await store.get_job(job_id)).stage(STAGE).completed_items for job_id in ids]


def measure(  # noqa: PLR0917 - one configuration of the matrix
    pool: Any, url: str, mode: str, writers: int, spread: bool, duration: float
) -> dict[str, Any]:
    """One configuration: its rate, its staleness, and whether it was exact."""
    job_ids = asyncio.run(_new_jobs(url, SPREAD_JOBS if spread else 1))
    start_at = time.time() + 1.0 + 0.05 * writers
    tasks = [Task(url, mode, job_ids, w, start_at, duration, writers) for w in range(writers)]
    outcomes: list[Outcome] = pool.map(work, tasks)
    reported = sum(o.items for o in outcomes)
    stored = asyncio.run(_total(url, job_ids))
    seconds = max(o.seconds for o in outcomes)
    staleness = sorted(s for o in outcomes for s in o.staleness)
    result: dict[str, Any] = {
        "items_per_second": reported / seconds,
        "reported": reported,
        "stored": stored,
        "exact": reported == stored,
    }
    if any(o.cpu for o in outcomes):
        result["writer_cpu_us_per_item"] = sum(o.cpu for o in outcomes) / max(reported, 1) * 1e6
    if staleness:
        result["staleness_p50_ms"] = statistics.median(staleness) * 1000
        result["staleness_p99_ms"] = staleness[int(len(staleness) * 0.99) - 1] * 1000
    if mode == "read-modify-write":
        result["lost_updates"] = reported - stored
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write bench/results/progress.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--writers", default="1,4,16")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--paced-only", action="store_true", help="only the paced PostgreSQL cases")
    args = parser.parse_args(argv)
    writer_counts = [int(w) for w in args.writers.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {}
    context = multiprocessing.get_context("spawn")
    processes = max([*writer_counts, 16])
    with context.Pool(processes) as pool:
        pool.map(_started, range(processes), chunksize=1)
        for _ in range(args.runs):
            for name in args.backends.split(","):
                with backend(name) as url:
                    for writers in [] if args.paced_only else writer_counts:
                        for spread in (False, True):
                            for mode in MODES:
                                key = f"{name}|{writers}|{'spread' if spread else 'hot'}|{mode}"
                                result = measure(pool, url, mode, writers, spread, args.duration)
                                runs.setdefault(key, []).append(result)
                                print(key, f"{result['items_per_second']:,.0f}/s", flush=True)
                    if name == "postgres":
                        paced = [
                            (f"coalesced+key@{PACED_HOT}", False),
                            (f"coalesced+key@{PACED_SPREAD}", True),
                        ]
                        if not args.paced_only:
                            paced.append(("read-modify-write", False))
                        for mode, spread in paced:
                            result = measure(pool, url, mode, 16, spread, args.duration)
                            target = "spread" if spread else "hot"
                            runs.setdefault(f"postgres|16|{target}|{mode}", []).append(result)
                            print(
                                f"postgres|16|{target}|{mode}",
                                f"{result['items_per_second']:,.0f}/s",
                                f"p50 {result.get('staleness_p50_ms', 0):,.0f} ms",
                                f"p99 {result.get('staleness_p99_ms', 0):,.0f} ms",
                                f"writers' CPU {result.get('writer_cpu_us_per_item', 0):.1f}",
                                "µs/item,",
                                "exact" if result["exact"] else "NOT EXACT",
                                flush=True,
                            )
    _report(runs, args)
    return 0


def _report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    results: dict[str, Any] = {}
    rows = []
    for key, samples in runs.items():
        name, writers, target, mode = key.split("|")
        rate = summary([s["items_per_second"] for s in samples])
        entry: dict[str, Any] = {
            "items_per_second": rate,
            "exact": all(s["exact"] for s in samples),
        }
        floor = runs.get(f"{name}|{writers}|{target}|floor")
        if floor and mode != "floor":
            ratios = [
                s["items_per_second"] / f["items_per_second"]
                for s, f in zip(samples, floor, strict=True)
                if f["items_per_second"] > 0
            ]
            if ratios:
                entry["vs_floor"] = summary(ratios)
        p50 = [s["staleness_p50_ms"] for s in samples if "staleness_p50_ms" in s]
        p99 = [s["staleness_p99_ms"] for s in samples if "staleness_p99_ms" in s]
        cpu = [s["writer_cpu_us_per_item"] for s in samples if "writer_cpu_us_per_item" in s]
        if cpu:
            entry["writer_cpu_us_per_item"] = summary(cpu)
        if p99:
            entry["staleness_p50_ms"] = summary(p50)
            entry["staleness_p99_ms"] = summary(p99)
        if mode == "read-modify-write":
            entry["lost_updates"] = summary([s["lost_updates"] for s in samples])
            entry["lost_share"] = summary([s["lost_updates"] / s["reported"] for s in samples])
        results[key] = entry
        rows.append(
            [
                name,
                writers,
                target,
                mode,
                f"{rate['median']:,.0f}",
                f"{entry['vs_floor']['median']:.2f}x" if "vs_floor" in entry else "",
                f"{entry['staleness_p50_ms']['median']:.0f}" if p99 else "",
                f"{entry['staleness_p99_ms']['median']:.0f}" if p99 else "",
                "yes" if entry["exact"] else "NO",
            ]
        )
    rmw = results.get("postgres|16|hot|read-modify-write")
    note = ""
    if rmw:
        note = (
            f"\nThe seed's read-modify-write, 16 writers on one row (PostgreSQL): "
            f"{rmw['lost_updates']['median']:,.0f} updates lost "
            f"({rmw['lost_share']['median'] * 100:.1f}% of those made).\n"
        )
    markdown = (
        "# Progress writes per second\n\n"
        f"{args.duration:g} s per configuration, {args.runs} runs, medians; vs floor is the "
        "median of per-run ratios to the bare UPDATE loop with the same writers and jobs. "
        "Staleness: add → durable, p50 and p99. Exact: the store's count equals what the writers "
        "reported.\n\n"
        + table(
            [
                "backend",
                "writers",
                "jobs",
                "mode",
                "items/s",
                "vs floor",
                "p50 ms",
                "p99 ms",
                "exact",
            ],
            rows,
        )
        + note
    )
    write(
        "progress",
        {"duration": args.duration, "runs": args.runs, "results": results},
        markdown,
        out=args.out,
    )


if __name__ == "__main__":
    raise SystemExit(main())
