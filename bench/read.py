"""Benchmark: how long one progress read (``store.get_job``) takes.

Usage::

    python -m bench.read [--items 50000] [--reads 3000] [--rounds 3]
                         [--backends sqlite,postgres] [--writers 2] [--rate 4000]
                         [--baseline-src DIR]

One job of three stages has ``--items`` items counted into its first stage
(with item keys, as workers count them). A reader process then times
``await store.get_job(job_id)`` ``--reads`` times in a row (after 300 reads
to warm up), and reports the median, p90 and p99 latency, reads a second and
the CPU time per read: its own (user + system) and, on PostgreSQL, that of
the server backends of its connections (``/proc/<pid>/stat``, found by the
reader's ``application_name``), which the machine's load does not change.

Each backend is read idle, then while ``--writers`` processes count items
into the same job (``ProgressTracker.add`` with keys, flushed every 100 ms)
at ``--rate`` items a second between them.

``--baseline-src DIR`` names another checkout's ``src`` directory: its
readers run that code (the same database), interleaved with this
checkout's readers (A B A B), so that the two compare under the same load.
Each figure is the median over the ``--rounds`` rounds.

PostgreSQL runs in a database of its own, created and dropped here, on
``$JOBTRACK_BENCH_POSTGRES_URL`` (default: the local server).

Measured with the defaults and 7 rounds, against the code before a read
became one statement (``--baseline-src``), on a 2-core machine shared with
other work (load average 10 to 21), medians, before → after:

==========  ========  ============  ===================  ===================
backend     load      latency (µs)  client CPU/read (µs)  server CPU/read (µs)
==========  ========  ============  ===================  ===================
SQLite      idle      127 → 114     154 → 137            -
SQLite      writing   106 → 89      123 → 104            -
PostgreSQL  idle      843 → 269     567 → 202            210 → 77
PostgreSQL  writing   967 → 325     555 → 212            223 → 77
==========  ========  ============  ===================  ===================

Before, a PostgreSQL ``get_job`` took a pooled connection (the pool's check
of it, ``""``, one round trip), then read the job's row and its stages'
(two more); now it is one prepared statement on the store's direct
connection. The p90 and p99 figures on that machine were the load's
(milliseconds either way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from multiprocessing.synchronize import Event
from pathlib import Path

import psycopg

from bench.progress import backend

STAGES = ("scan", "thumbnail", "cache")
READER_APP = "jobtrack-bench-read"
WARMUP = 300
_TICKS = os.sysconf("SC_CLK_TCK")


async def _setup(url: str, items: int) -> str:
    """A job of three stages with ``items`` keyed items counted; its id."""
    from jobtrack.store import open_store
    from jobtrack.store.base import StageProgress

    store = open_store(url)
    job = await store.create_job("bench-read", list(STAGES))
    batch = 5_000
    for start in range(0, items, batch):
        keys = [f"item-{n}" for n in range(start, min(start + batch, items))]
        await store.add_progress([StageProgress(job.id, STAGES[0], completed_keys=keys)])
    counted = (await store.get_job(job.id)).stages[STAGES[0]].completed_items
    assert counted == items, counted
    await store.aclose()
    return job.id


def _write(url: str, job_id: str, writer: int, rate: float, stop: Event) -> None:
    """Count keyed items into the job's second stage at ``rate`` a second."""
    asyncio.run(_write_async(url, job_id, writer, rate, stop))


async def _write_async(url: str, job_id: str, writer: int, rate: float, stop: Event) -> None:
    from jobtrack.store import open_store
    from jobtrack.tracking import ProgressTracker

    store = open_store(url)
    tracker = ProgressTracker(store)
    started = time.monotonic()
    sent = 0
    while not stop.is_set():
        due = int((time.monotonic() - started) * rate)
        for n in range(sent, due):
            tracker.add(job_id, STAGES[1], item_key=f"w{writer}-{n}")
        sent = max(sent, due)
        await asyncio.sleep(0.01)
    await tracker.flush(max_wait=10)
    await store.aclose()


def _process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) process ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _backends(url: str, app: str) -> list[int]:
    """The server processes of the connections named ``app``."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()
    return [int(row[0]) for row in rows]


def _server_cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # not on this machine, or gone
            total += _process_cpu(pid)
    return total


async def _read(url: str, job_id: str, reads: int) -> dict[str, float]:
    """Time ``reads`` reads of the job, after a warm-up."""
    from jobtrack.store import open_store

    app = f"{READER_APP}-{uuid.uuid4().hex[:8]}"
    postgres = url.startswith("postgresql:")
    store = open_store(f"{url}?application_name={app}" if postgres else url)
    for _ in range(WARMUP):
        await store.get_job(job_id)
    pids = _backends(url, app) if postgres else []
    times = []
    server_before = _server_cpu(pids)
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for _ in range(reads):
        begun = time.perf_counter_ns()
        await store.get_job(job_id)
        times.append(time.perf_counter_ns() - begun)
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    server = _server_cpu(pids) - server_before
    await store.aclose()
    own = usage.ru_utime + usage.ru_stime - usage_before.ru_utime - usage_before.ru_stime
    times.sort()
    return {
        "median_us": times[len(times) // 2] / 1000,
        "p90_us": times[int(len(times) * 0.9)] / 1000,
        "p99_us": times[int(len(times) * 0.99)] / 1000,
        "reads_per_s": reads / elapsed,
        "client_cpu_us": own / reads * 1e6,
        "server_cpu_us": server / reads * 1e6,
        "backends": len(pids),
    }


def _reader(src: str | None, url: str, job_id: str, reads: int) -> dict[str, float]:
    """One reader process, on the code of ``src`` (None: this checkout's)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "bench.read", "--reader", url, job_id, str(reads)]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _summary(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--reads", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=4_000, help="items/s, all writers")
    parser.add_argument("--baseline-src", default=None, help="another checkout's src/")
    parser.add_argument("--loads", default="idle,writing")
    reader = ("URL", "JOB", "READS")
    parser.add_argument("--reader", nargs=3, metavar=reader, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reader:
        url, job_id, reads = args.reader
        import jobtrack

        result = asyncio.run(_read(url, job_id, int(reads)))
        print(f"# jobtrack from {Path(jobtrack.__file__).parent}", file=sys.stderr)
        print(json.dumps(result))
        return 0
    variants: list[tuple[str, str | None]] = [("current", None)]
    if args.baseline_src:
        variants.insert(0, ("baseline", str(Path(args.baseline_src).resolve())))
    print(
        f"get_job: {args.items} items counted, {args.reads} reads a run, "
        f"median of {args.rounds} rounds; writers {args.writers} at {args.rate:.0f} items/s"
    )
    header = "backend   load     code      median_us  p90_us  p99_us  reads/s"
    print(header + "  client_cpu_us  server_cpu_us")
    for name in args.backends.split(","):
        with backend(name) as url:
            job_id = asyncio.run(_setup(url, args.items))
            for load in args.loads.split(","):
                runs = _measure(args, url, job_id, variants, writing=load == "writing")
                for variant, _ in variants:
                    s = _summary(runs[variant])
                    print(
                        f"{name:9} {load:8} {variant:9} {s['median_us']:9.0f} "
                        f"{s['p90_us']:7.0f} {s['p99_us']:7.0f} {s['reads_per_s']:8.0f} "
                        f"{s['client_cpu_us']:14.0f} {s['server_cpu_us']:14.0f}",
                        flush=True,
                    )
    return 0


def _measure(
    args: argparse.Namespace,
    url: str,
    job_id: str,
    variants: Sequence[tuple[str, str | None]],
    *,
    writing: bool,
) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant, _ in variants}
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    writers = []
    if writing:
        rate = args.rate / args.writers
        for n in range(args.writers):
            process = context.Process(target=_write, args=(url, job_id, n, rate, stop))
            process.start()
            writers.append(process)
        time.sleep(2)  # the writers connected and flushing
    try:
        for _ in range(args.rounds):
            for variant, src in variants:
                runs[variant].append(_reader(src, url, job_id, args.reads))
    finally:
        stop.set()
        for process in writers:
            process.join(30)
    if writing:
        counted = asyncio.run(_counted(url, job_id))
        print(f"# {counted} items counted by the writers so far", flush=True)
    return runs


async def _counted(url: str, job_id: str) -> int:
    from jobtrack.store import open_store

    store = open_store(url)
    job = await store.get_job(job_id)
    await store.aclose()
    return job.stages[STAGES[1]].completed_items


if __name__ == "__main__":
    raise SystemExit(main())
