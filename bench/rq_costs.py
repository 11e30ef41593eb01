"""Where the RQ integration's cost per job goes: RQ's forking worker bare
and with jobtrack's counting, and variants of it in between, interleaved.

Usage::

    python -m bench.rq_costs [--tasks 2000] [--rounds 3] [--variants bare,tracked,...]

Each round runs every variant once, in turn (A B C A B C ...): N jobs of
the integrations benchmark's task (``bench.integrations_apps.rq_app.noop``,
one Redis ``INCR``) are enqueued first, then 2 ``rq worker --burst``
processes of the variant's worker class run them and exit. Measured per
job: wall time and CPU time of the workers and their work horses
(``RUSAGE_CHILDREN``), less those of the same variant on an empty queue
(start-up and stop); beside them the CPU time of the PostgreSQL and Redis
servers over the run (the whole machine's: other clients count too).

The variants:

- ``bare``: RQ's ``Worker`` (jobs enqueued without jobtrack);
- ``nocount``: ``JobtrackWorker`` whose counting does nothing (jobs sent
  through jobtrack: the ledger, the job's ``meta``);
- ``readonly``: the end read from Redis (:func:`count_end`) but handed to
  a counter that drops it: no counter thread;
- ``idle``: a counter thread started in the worker's process (its app
  open), nothing counted;
- ``inprocess``: ``JobtrackWorker`` counting with a ``TaskCounter`` in its
  own process, waiting between jobs for the writes (as it did before its
  counter had a process of its own);
- ``tracked``: ``JobtrackWorker`` as it is (its counter in a process of
  its own);
- ``eachend``: ``JobtrackWorker`` handing each end to its counter at once
  (what it did before it held them).

The counting variants' counts are checked exactly: the job completed,
N items done.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.job import Job as RQJob

import jobtrack
from bench.integrations_apps.probe import REDIS_URL, STAGE, TYPE, count_key
from bench.integrations_apps.rq_app import KEEP, BareWorker, TrackedWorker
from bench.progress import backend
from jobtrack.integrations import TaskCounter
from jobtrack.integrations.rq import Counter, RQTracking, count_end
from jobtrack.integrations.tasks import TaskRef
from jobtrack.model import JobStatus
from jobtrack.store import open_store

ROOT = Path(__file__).resolve().parent.parent
FUNC = "bench.integrations_apps.rq_app.noop"
WORKERS = {
    "bare": "bench.rq_costs.BareStatsWorker",
    "nocount": "bench.rq_costs.NoCountWorker",
    "readonly": "bench.rq_costs.ReadOnlyWorker",
    "idle": "bench.rq_costs.IdleCounterWorker",
    "inprocess": "bench.rq_costs.InProcessWorker",
    "tracked": "bench.rq_costs.TrackedStatsWorker",
    "eachend": "bench.rq_costs.EachEndWorker",
}
COUNTED = {"tracked", "inprocess", "eachend"}
STATS = "jobtrack-bench-rqc-stats"


class _Stats:
    """Adds to the Redis hash :data:`STATS` (fields prefixed by the
    ``JOBTRACK_BENCH_PREFIX``): each horse's CPU and page faults (from
    ``wait4``), the time of the horse's garbage collections by generation,
    and the main process's own CPU at its end."""

    _gc_started = 0.0

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        pid, status, usage = super().wait_for_horse()  # type: ignore[misc]
        if usage is not None:
            self._stat("horse_cpu", usage.ru_utime + usage.ru_stime)
            self._stat("horse_minflt", usage.ru_minflt)
        return pid, status, usage

    def perform_job(self, job: RQJob, queue: Queue, execution: Any) -> bool:
        times: dict[str, float] = {}

        def callback(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                self._gc_started = time.perf_counter()
            else:
                name = f"gc{info['generation']}"
                times[name] = times.get(name, 0.0) + time.perf_counter() - self._gc_started
                times[name + "_n"] = times.get(name + "_n", 0.0) + 1

        gc.callbacks.append(callback)
        try:
            return bool(super().perform_job(job, queue, execution))  # type: ignore[misc]
        finally:
            gc.callbacks.remove(callback)
            for name, value in times.items():
                self._stat(name, value)

    def teardown(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._stat("main_cpu", usage.ru_utime + usage.ru_stime)
        self._stat("main_sys", usage.ru_stime)
        self._stat("main_minflt", usage.ru_minflt)
        for task in Path("/proc/self/task").iterdir():
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = "main_thread" if task.name == str(os.getpid()) else "other_threads"
            tick = os.sysconf("SC_CLK_TCK")
            self._stat(name + "_cpu", (int(fields[11]) + int(fields[12])) / tick)
            self._stat(name + "_minflt", int(fields[7]))
        super().teardown()  # type: ignore[misc]

    def _stat(self, name: str, value: float) -> None:
        connection: redis.Redis = self.connection  # type: ignore[attr-defined]
        prefix = os.environ["JOBTRACK_BENCH_PREFIX"]
        connection.hincrbyfloat(STATS, prefix + name, value)


class BareStatsWorker(_Stats, BareWorker):
    """RQ's worker."""


class TrackedStatsWorker(_Stats, TrackedWorker):
    """jobtrack's worker."""


class NoCountWorker(_Stats, TrackedWorker):
    """Counts nothing."""

    def _count(self, job: RQJob) -> None:
        pass


class _Dropping:
    """A counter that drops what it is told."""

    def done(self, ref: TaskRef) -> None:
        """Drop."""

    def failed(self, ref: TaskRef, error: str, *, attempts: int = 1) -> None:
        """Drop."""

    def retrying(self, ref: TaskRef) -> None:
        """Drop."""


class ReadOnlyWorker(_Stats, TrackedWorker):
    """Reads each job's end back from Redis, counts nothing."""

    def _count(self, job: RQJob) -> None:
        count_end(_Dropping(), job)


class EachEndWorker(_Stats, TrackedWorker):
    """Hands each job's end to the counter as soon as it is read (no
    ends held)."""

    def _count(self, job: RQJob) -> None:
        count_end(self.jobtrack_counter, job)


class InProcessWorker(_Stats, TrackedWorker):
    """Counts with a counter thread in the worker's process, waiting
    between jobs for what it hands over to be written."""

    _jobtrack_waits = True

    def _jobtrack_new_counter(self, app: jobtrack.App) -> Counter:
        return TaskCounter(app)


class IdleCounterWorker(_Stats, TrackedWorker):
    """Starts a counter thread in the worker's process (its app open) and
    counts nothing."""

    _idle: TaskCounter | None = None

    def _count(self, job: RQJob) -> None:
        if self._idle is None:
            self._idle = TaskCounter(self._jobtrack_app_used)
        self._idle.start()

    def teardown(self) -> None:
        super().teardown()
        if self._idle is not None:
            self._idle.close()


def _ticks(pid: int, children: bool) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # utime, stime, cutime, cstime: the 14th to 17th fields (11 to 14 here)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def _server_ticks() -> dict[str, int]:
    """CPU ticks of PostgreSQL (the postmaster's reaped backends too) and Redis."""
    out = {"postgres": 0, "redis": 0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        pid = int(entry.name)
        if comm == "postgres":
            out["postgres"] += _ticks(pid, children=True)
        elif comm == "redis-server":
            out["redis"] += _ticks(pid, children=False)
    return out


def _produce(variant: str, n: int, queue: Queue, env: dict[str, str]) -> str | None:
    if variant == "bare":
        for start in range(0, n, 1000):
            batch = range(start, min(start + 1000, n))
            queue.enqueue_many([Queue.prepare_data(FUNC, (i,), result_ttl=KEEP) for i in batch])
        return None
    tracking = RQTracking(jobtrack.App(jobtrack.Settings.from_env(env)), queue)
    tracking.job_type(TYPE, [STAGE])
    with tracking.start_job(TYPE) as job:
        for i in range(n):
            job.send(STAGE, FUNC, i, result_ttl=KEEP)
    return str(job.job.id)


def _check(store_url: str, job_id: str, n: int) -> None:
    async def get() -> Any:
        store = open_store(store_url)
        try:
            return await store.get_job(job_id)
        finally:
            await store.aclose()

    job = asyncio.run(get())
    stage = job.stage(STAGE)
    if job.status != JobStatus.COMPLETED or stage.completed_items != n or stage.failed_items:
        raise RuntimeError(f"job {job.status}, {stage.completed_items} done, not {n}")


def one(variant: str, n: int, store_url: str, data_dir: str) -> dict[str, float]:
    """One burst of ``n`` jobs on 2 workers of ``variant``: wall and CPU seconds."""
    tag = uuid.uuid4().hex[:10]
    prefix = f"jobtrack-bench-rqc:{tag}:"
    name = f"jobtrack-bench-rqc-{tag}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    env |= {
        "JOBTRACK_BENCH_QUEUE": name,
        "JOBTRACK_BENCH_PREFIX": prefix,
        "JOBTRACK_BENCH_ITEMS": str(max(n, 1)),
        "JOBTRACK_STORE_URL": store_url,
        "JOBTRACK_DATA_DIR": data_dir,
        "PYTHONPATH": str(ROOT),
    }
    client = redis.Redis.from_url(REDIS_URL)
    queue = Queue(name, connection=client)
    try:
        job_id = _produce(variant, n, queue, env)
        command = [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", REDIS_URL]
        command += ["--worker-class", WORKERS[variant], "--logging_level", "WARNING", name]
        servers = _server_ticks()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        workers = [
            subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            for _ in range(2)
        ]
        for worker in workers:
            if worker.wait() != 0:
                raise RuntimeError(f"{variant}: worker exited with {worker.returncode}")
        wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        servers_after = _server_ticks()
        done = int(client.get(count_key(prefix)) or 0)
        if done != n:
            raise RuntimeError(f"{variant}: {done} jobs ran, not {n}")
        if job_id is not None and variant in COUNTED:
            _check(store_url, job_id, n)
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[str, float] = {}
        for key, value in client.hgetall(STATS).items():
            field = key.decode() if isinstance(key, bytes) else str(key)
            if field.startswith(prefix):
                stats[field[len(prefix) :]] = float(value)
            client.hdel(STATS, key)
        return stats | {
            "wall": wall,
            "user": after.ru_utime - before.ru_utime,
            "sys": after.ru_stime - before.ru_stime,
            "postgres": (servers_after["postgres"] - servers["postgres"]) / tick,
            "redis": (servers_after["redis"] - servers["redis"]) / tick,
        }
    finally:
        names = list(client.scan_iter(f"*{tag}*", count=1000))
        for start in range(0, len(names), 1000):
            client.delete(*names[start : start + 1000])
        client.close()


def main(argv: list[str] | None = None) -> int:
    """Run the rounds; print each run and the medians per job."""
    parser = argparse.ArgumentParser(description="RQ integration's cost per job, by variant")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(WORKERS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    empty: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with backend("postgres") as url, tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for variant in variants:
                empty[variant].append(one(variant, 0, url, folder))
                result = one(variant, args.tasks, url, folder)
                runs[variant].append(result)
                print(variant, json.dumps({k: round(v, 3) for k, v in result.items()}), flush=True)
    summary: dict[str, dict[str, float]] = {}
    for variant in variants:
        base = {k: statistics.median(r[k] for r in empty[variant]) for k in empty[variant][0]}
        per = {}
        for key in ("wall", "user", "sys", "postgres", "redis"):
            per[key] = statistics.median((r[key] - base[key]) / args.tasks for r in runs[variant])
        cpu = [
            (r["user"] + r["sys"] - base["user"] - base["sys"]) / args.tasks for r in runs[variant]
        ]
        per["cpu_ms"] = statistics.median(cpu) * 1000
        per["items_per_s"] = 1 / per["wall"]
        per["wall_ms"] = per.pop("wall") * 1000
        summary[variant] = per
        print(variant, json.dumps({k: round(v, 4) for k, v in per.items()}), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"runs": runs, "empty": empty, "per_job": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
