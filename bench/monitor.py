"""The seed's comparison, measured: centralized polling against the hybrid.

For 6, 100, 1,000 and 10,000 jobs of ``--items`` no-op items each, on
PostgreSQL, the items are produced over ``--window`` seconds (all jobs at
once, in a shuffled order) and each configuration runs until every job has
completed:

- ``hybrid``: each item is reported to a coalescing ``ProgressTracker``
  (with its item key); the fallback monitor runs beside it (a cycle a
  minute, stuck after 300 s), as deployed;
- ``centralized``: consumers report nothing; ``Monitor(mode="centralized")``
  recounts every active job from the ground truth every 5 s, as the seed's
  old service did.

Reported: the time from a job's last item to its ``completed`` status (p50,
p99), the total time (first item to last completion) and the store calls per
second of tracking (consumers' writes plus the monitor's queries and writes).

Also: one fallback cycle over 1,000,000 jobs (1,000 of them active, 100
stuck): the stuck query with the seed's index and without it, and the whole
cycle. Results: bench/results/monitor.{json,md,png}.

Run: ``python -m bench.monitor [--runs 1] [--jobs 6,100,1000,10000]``.

``--scale`` runs the scale variant instead (:mod:`bench.scale`: 50,000 and
100,000 jobs at once over several worker processes, the cycle over
1,000,000 jobs with 10,000 stuck, the ledger's size), into
bench/results/scale/: ``python -m bench.monitor --scale [--scale-jobs
10000,50000,100000] [--workers 4] [--rate 5000] [--runs 1] [--stuck-every 50]
[--concurrency 1,8] [--ledger-items 200000]``. ``make bench SCALE=1`` adds
it to ``make bench``; the tests never run it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import psycopg

from bench.progress import backend
from bench.report import RESULTS, summary, table, write
from jobtrack.model import Job, StageCounts
from jobtrack.monitor import Monitor, Truth
from jobtrack.store import JobStore, open_store
from jobtrack.store.postgres.store import _Q
from jobtrack.tracking import ProgressTracker

JOB_TYPE = "bench-noop"
STAGE = "noop"


class Produced:
    """The ground truth of a no-op stage: how many items of each job were done."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}
        self.last_at: dict[str, float] = {}  # wall-clock time of each job's last item


class NoopReconciler:
    """The truth of the no-op jobs, from what was produced."""

    job_type = JOB_TYPE

    def __init__(self, produced: Produced, items: int) -> None:
        self._produced = produced
        self._items = items

    async def truth(self, job: Job) -> Truth:
        done = self._produced.done.get(job.id, 0)
        keys = [str(n) for n in range(done)]
        return Truth(
            {STAGE: StageCounts(self._items, done, 0)},
            done={STAGE: keys},
            missing={STAGE: [str(n) for n in range(done, self._items)]},
        )

    async def backlog(self) -> Mapping[str, int]:
        return {STAGE: 1}  # items are still being produced: never re-drive here

    can_redrive = False

    async def redrive(self, job: Job, missing: Mapping[str, Sequence[str]]) -> int:
        return 0


class Counting:
    """A store that counts the calls made through it (a PostgreSQL one here)."""

    backend: ClassVar[str] = "postgres"

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await method(*args, **kwargs)

        return call


def _bulk_jobs(
    url: str, count: int, items: int, *, active_every: int = 1, age: str = "0 seconds"
) -> list[str]:
    """``count`` jobs of one sealed no-op stage, inserted in bulk, last
    updated ``age`` ago; their ids. One in ``active_every`` is in progress,
    the rest completed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO jobs (id, job_type, status, created_at, updated_at, completed_at)
            SELECT 'j' || n, %(type)s,
                   CASE WHEN n %% %(every)s = 0 THEN 'in_progress' ELSE 'completed' END,
                   now() - %(age)s::interval, now() - %(age)s::interval,
                   CASE WHEN n %% %(every)s = 0 THEN NULL ELSE now() - %(age)s::interval END
            FROM generate_series(1, %(count)s) n
            """,
            {"type": JOB_TYPE, "count": count, "every": active_every, "age": age},
        )
        conn.execute(
            """
            INSERT INTO stages (job_id, name, position, status, total_items, total_final)
            SELECT id, %(stage)s, 0, 'in_progress', %(items)s, true
            FROM jobs WHERE status = 'in_progress' AND job_type = %(type)s
            """,
            {"stage": STAGE, "items": items, "type": JOB_TYPE},
        )
        conn.execute("ANALYZE jobs")
        rows = conn.execute(
            "SELECT id FROM jobs WHERE status = 'in_progress' AND job_type = %(type)s",
            {"type": JOB_TYPE},
        ).fetchall()
    return [row[0] for row in rows]


async def _produce(
    job_ids: list[str], items: int, window: float, produced: Produced, tracker: Any
) -> None:
    order = [job for job in job_ids for _ in range(items)]
    random.Random(7).shuffle(order)
    started = time.monotonic()
    every = max(1, len(order) // 500)
    for n, job_id in enumerate(order):
        done = produced.done.get(job_id, 0)
        produced.done[job_id] = done + 1
        produced.last_at[job_id] = time.time()
        if tracker is not None:
            tracker.add(job_id, STAGE, item_key=str(done))
        if n % every == 0:  # keep to the window
            ahead = started + window * n / len(order) - time.monotonic()
            await asyncio.sleep(max(ahead, 0))


def _completed(url: str) -> dict[str, datetime]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, completed_at FROM jobs WHERE status = 'completed' AND job_type = %s",
            (JOB_TYPE,),
        ).fetchall()
    return {row[0]: row[1] for row in rows}


async def run_one(url: str, mode: str, jobs: int, items: int, window: float) -> dict[str, Any]:
    """One configuration, on a store emptied first."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, stages, item_keys, job_events CASCADE")
    job_ids = _bulk_jobs(url, jobs, items)
    produced = Produced()
    store = Counting(open_store(url))
    reconciler = NoopReconciler(produced, items)
    tracker = ProgressTracker(store) if mode == "hybrid" else None
    monitor = Monitor(
        store,
        [reconciler],
        mode=mode,
        stuck_after=300.0,
    )
    stop = asyncio.Event()
    watcher = asyncio.create_task(monitor.run(stop, interval=5.0 if mode == "centralized" else 60))
    started = time.time()
    await _produce(job_ids, items, window, produced, tracker)
    deadline = time.monotonic() + 600
    while True:
        done = await asyncio.to_thread(_completed, url)
        if len(done) == jobs or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    finished = max(done.values()).timestamp() if done else time.time()
    stop.set()
    await watcher
    if tracker is not None:
        await tracker.flush(max_wait=10)
    calls = store.calls
    await store.aclose()
    latencies = sorted(done[j].timestamp() - produced.last_at[j] for j in job_ids if j in done)
    total = finished - started
    return {
        "completed": len(done),
        "latency_p50_s": statistics.median(latencies),
        "latency_p99_s": latencies[max(0, int(len(latencies) * 0.99) - 1)],
        "total_s": total,
        "store_calls_per_s": calls / total,
    }


async def fallback_cycle(url: str, *, jobs: int = 1_000_000, runs: int = 20) -> dict[str, Any]:
    """The stuck query and one monitor cycle over ``jobs`` jobs."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, stages, item_keys, job_events CASCADE")
    ids = _bulk_jobs(url, jobs, 1, active_every=1000, age="1 day")  # one in 1,000 active...
    stuck = min(100, len(ids) // 2)
    with psycopg.connect(url, autocommit=True) as conn:  # ...100 of them stuck
        conn.execute("UPDATE jobs SET updated_at = now() WHERE id = ANY(%s)", (ids[stuck:],))
        conn.execute("ANALYZE jobs")
    store = open_store(url)
    threshold = datetime.now(UTC) - timedelta(seconds=300)

    async def query_ms() -> float:
        begin = time.perf_counter()
        found = await store.find_stuck(JOB_TYPE, updated_before=threshold)
        assert len(found) == stuck, len(found)
        return (time.perf_counter() - begin) * 1000

    def raw_ms(count: int) -> list[float]:  # the SQL alone, on one open connection
        params = {"job_type": JOB_TYPE, "before": threshold, "limit": 100}
        params |= {"after": datetime(1970, 1, 1, tzinfo=UTC), "after_id": ""}
        timings = []
        with psycopg.connect(url) as conn:
            for _ in range(count):
                begin = time.perf_counter()
                assert len(conn.execute(_Q["find_stuck"], params).fetchall()) == stuck
                timings.append((time.perf_counter() - begin) * 1000)
        return timings

    with_index = [await query_ms() for _ in range(runs)]
    raw_with_index = raw_ms(runs)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP INDEX idx_stuck_jobs")
    without_index = [await query_ms() for _ in range(max(runs // 4, 3))]
    raw_without_index = raw_ms(max(runs // 4, 3))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE INDEX idx_stuck_jobs ON jobs (job_type, status, updated_at)")
        conn.execute("ANALYZE jobs")
    produced = Produced()
    for job_id in ids[:stuck]:
        produced.done[job_id] = 1  # their one item was done; only the count was lost
    monitor = Monitor(store, [NoopReconciler(produced, 1)], stuck_after=300.0)
    begin = time.perf_counter()
    report = await monitor.cycle()
    cycle_ms = (time.perf_counter() - begin) * 1000
    assert (report.stuck, report.completed) == (stuck, stuck), report
    await store.aclose()
    return {
        "jobs": jobs,
        "active": len(ids),
        "stuck": stuck,
        "stuck_query_ms": summary(raw_with_index),
        "stuck_query_without_index_ms": summary(raw_without_index),
        "find_stuck_call_ms": summary(with_index),
        "find_stuck_call_without_index_ms": summary(without_index),
        "cycle_ms": cycle_ms,
        "cycle_jobs_completed": report.completed,
        "cycle_queries": report.queries,
    }


def _chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({int(k.split("|")[1]) for k in results})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    for offset, mode in ((-width / 2, "centralized"), (width / 2, "hybrid")):
        p99 = [results[f"{mode}|{n}"]["latency_p99_s"]["median"] for n in counts]
        calls = [results[f"{mode}|{n}"]["store_calls_per_s"]["median"] for n in counts]
        xs = [i + offset for i in range(len(counts))]
        axes[0].bar(xs, p99, width, label=mode)
        axes[1].bar(xs, calls, width, label=mode)
    for axis, title in zip(
        axes, ("last item → completed, p99 (s)", "store calls per second"), strict=True
    ):
        axis.set_xticks(range(len(counts)), [f"{n:,} jobs" for n in counts])
        axis.set_yscale("log")
        axis.set_title(title)
        axis.legend()
    fig.suptitle("Centralized polling vs hybrid tracking (PostgreSQL, no-op items)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and the 1,000,000-job cycle; write bench/results/monitor.*."""
    parser = argparse.ArgumentParser(description="Centralized vs hybrid, measured.")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--jobs", default="6,100,1000,10000")
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None)
    scale = parser.add_argument_group("scale variant")
    scale.add_argument("--scale", action="store_true", help="run the scale variant instead")
    scale.add_argument(
        "--scale-jobs",
        default="10000,50000,100000",
        help="JOBS[xITEMS[xWORKERS[xMONITOR]]], comma-separated, run in turn (MONITOR 0: none)",
    )
    scale.add_argument("--workers", type=int, default=4, help="worker processes")
    scale.add_argument("--rate", type=float, default=5_000.0, help="items/s of all workers")
    scale.add_argument(
        "--stuck-every", type=int, default=50, help="one job in this many active, half stuck"
    )
    scale.add_argument(
        "--concurrency", default="1,8", help="the fallback cycle's concurrencies, in turn"
    )
    scale.add_argument(
        "--ledger-items", type=int, default=200_000, help="items for the ledger's size (0: none)"
    )
    scale.add_argument(
        "--pg-config",
        default="machine",
        help="servers to run on, comma-separated, interleaved: machine (the machine's own)"
        " or a private one: machine-default, production (bench.pgserver.CONFIGS)",
    )
    scale.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the private servers over their configuration's (repeatable)",
    )
    scale.add_argument(
        "--max-write",
        default="default",
        help="the workers' trackers' entries per store call, comma-separated, each a run"
        " of its own (default: the tracker's)",
    )
    scale.add_argument(
        "--free-first",
        default="0",
        help="the workers' PostgreSQL stores' free_first, comma-separated (1, 0),"
        " each a run of its own",
    )
    args = parser.parse_args(argv)
    if args.scale:
        from bench import scale as scale_variant

        scale_variant.run(
            configs=scale_variant.parse_configs(
                args.scale_jobs, items=args.items, workers=args.workers
            ),
            rate=args.rate,
            runs=args.runs,
            million=args.million,
            stuck_every=args.stuck_every,
            concurrencies=[int(c) for c in args.concurrency.split(",")],
            ledger_items=args.ledger_items,
            out=args.out or RESULTS / "scale",
            pg_configs=args.pg_config.split(","),
            pg_settings=dict(s.split("=", 1) for s in args.pg_setting),
            max_writes=[None if w == "default" else int(w) for w in args.max_write.split(",")],
            free_firsts=[bool(int(f)) for f in args.free_first.split(",")],
        )
        return 0
    args.out = args.out or RESULTS
    runs: dict[str, list[dict[str, Any]]] = {}
    with backend("postgres") as url:
        asyncio.run(_migrate(url))
        for _ in range(args.runs):
            for jobs in (int(j) for j in args.jobs.split(",")):
                for mode in ("centralized", "hybrid"):
                    result = asyncio.run(run_one(url, mode, jobs, args.items, args.window))
                    runs.setdefault(f"{mode}|{jobs}", []).append(result)
                    print(mode, jobs, result, flush=True)
        cycle = asyncio.run(fallback_cycle(url, jobs=args.million))
        print("fallback cycle", cycle, flush=True)
    _report(runs, cycle, args)
    return 0


async def _migrate(url: str) -> None:
    store = open_store(url)
    await store.list_jobs()
    await store.aclose()


def _report(runs: dict[str, list[dict[str, Any]]], cycle: dict[str, Any], args: Any) -> None:
    results: dict[str, Any] = {}
    for key, samples in runs.items():
        results[key] = {
            name: summary([s[name] for s in samples])
            for name in ("latency_p50_s", "latency_p99_s", "total_s", "store_calls_per_s")
        }
        results[key]["completed"] = min(s["completed"] for s in samples)
    rows = []
    for key, entry in results.items():
        mode, jobs = key.split("|")
        rows.append(
            [
                f"{int(jobs):,}",
                mode,
                f"{entry['latency_p50_s']['median']:.2f}",
                f"{entry['latency_p99_s']['median']:.2f}",
                f"{entry['total_s']['median']:.1f}",
                f"{entry['store_calls_per_s']['median']:,.0f}",
                entry["completed"],
            ]
        )
    args.out.mkdir(parents=True, exist_ok=True)
    _chart(results, args.out / "monitor.png")
    markdown = (
        "# Centralized polling vs hybrid tracking\n\n"
        f"PostgreSQL; {args.items} no-op items per job, produced over {args.window:g} s;"
        f" centralized recounts every active job every 5 s; medians of {args.runs} run(s)."
        " Latency: a job's last item to its `completed` status. Store calls: tracking's"
        " writes and the monitor's queries, per second of the run.\n\n"
        + table(
            ["jobs", "mode", "p50 (s)", "p99 (s)", "total (s)", "store calls/s", "completed"],
            rows,
        )
        + f"\n{cycle['jobs']:,} jobs ({cycle['active']:,} active, {cycle['stuck']} stuck):"
        " the stuck query takes"
        f" {cycle['stuck_query_ms']['median']:.2f} ms with the seed's index and"
        f" {cycle['stuck_query_without_index_ms']['median']:.1f} ms without it (medians; through"
        f" `JobStore.find_stuck`, which also loads the jobs' stages and checks the pooled"
        f" connection: {cycle['find_stuck_call_ms']['median']:.2f} and"
        f" {cycle['find_stuck_call_without_index_ms']['median']:.1f} ms);"
        f" one whole fallback cycle (claim, reconcile and complete the stuck jobs)"
        f" {cycle['cycle_ms']:.0f} ms.\n\n![chart](monitor.png)\n"
    )
    write(
        "monitor",
        {"items": args.items, "window_s": args.window, "results": results, "cycle": cycle},
        markdown,
        out=args.out,
    )


if __name__ == "__main__":
    raise SystemExit(main())
