"""The CPU a :class:`~jobtrack.integrations.counter.TaskCounter` costs per
task, on PostgreSQL, apart from any framework.

Usage::

    python -m bench.counter_cpu [--rate 400] [--seconds 10] [--rounds 3]
                                [--flush-interval 0.1] [--compare OTHER_COUNTER.py]

A thread plays a worker process's task thread: it reports ``--rate`` task
ends a second (``done()``, paced by sleeps) for ``--seconds``, then
flushes. Measured from ``/proc``: the CPU seconds (user + system) of the
reporting thread inside ``done()`` (``time.thread_time``), of the process's
other threads (the counter's), with their voluntary context switches (their
wake-ups), and of the PostgreSQL backends of the run's database; each per
task, in µs, and the store writes made (the tracker's write count).
``--compare`` loads another module defining ``TaskCounter`` (an older
version of the counter, say) and measures it too, interleaved with the
package's (A B A B...); the medians of each are printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

import jobtrack
from bench.progress import backend
from jobtrack.integrations import counter as package_counter
from jobtrack.integrations.tasks import TaskCall, TaskRef
from jobtrack.model import Job
from jobtrack.store.ledger import LedgerItem
from jobtrack.tracking.stats import WRITE_STATS

TICK = os.sysconf("SC_CLK_TCK")
TYPE, STAGE = "bench-counter", "run"


class _NoSender:
    """A sender that sends nothing: the ledger is all the run needs."""

    async def send(self, job: Job, stage: str, items: Sequence[LedgerItem]) -> None:
        return None

    async def backlog(self, stage: str) -> int | None:
        return 0


def _cpu(path: str) -> tuple[float, int]:
    try:
        with open(f"{path}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"{path}/status") as f:
            switches = next(
                int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches")
            )
    except (OSError, StopIteration):
        return 0.0, 0
    return (int(fields[11]) + int(fields[12])) / TICK, switches


def _threads(skip: set[int]) -> tuple[float, int]:
    """CPU seconds and voluntary switches of this process's threads but ``skip``."""
    cpu, switches = 0.0, 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) not in skip:
            c, s = _cpu(f"/proc/self/task/{tid}")
            cpu, switches = cpu + c, switches + s
    return cpu, switches


def _pg(url: str) -> float:
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/test", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return sum(_cpu(f"/proc/{int(pid)}")[0] for (pid,) in rows)


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_counter_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"not a module: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def _new_job(app: jobtrack.App, items: int) -> str:
    payload = TaskCall("bench.noop").payload()
    async with app, app.start_job(TYPE) as producer:
        await producer.add(STAGE, [LedgerItem(f"k{i}", payload) for i in range(items)])
    return producer.job.id


def one(  # noqa: PLR0917 - one run of the matrix
    module: ModuleType, url: str, folder: str, rate: int, seconds: float, interval: float
) -> dict[str, Any]:
    """One run of ``module``'s counter: CPU per task of each part."""
    settings = jobtrack.Settings(data_dir=Path(folder), store_url=url, flush_interval=interval)
    app = jobtrack.App(settings)
    app.job_type(TYPE, [STAGE], sender=_NoSender())
    items = int(rate * seconds)
    job_id = asyncio.run(_new_job(app, items))
    refs = [TaskRef(job_id, STAGE, f"k{i}") for i in range(items)]
    counter = module.TaskCounter(app)
    counter.start()
    result: dict[str, Any] = {}

    def report() -> None:
        me = threading.get_native_id()
        threads0, pg0, writes0 = _threads({me}), _pg(url), WRITE_STATS.writes
        inside = 0.0
        began = time.monotonic()
        for n, ref in enumerate(refs):
            wait = began + n / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            start = time.thread_time()
            counter.done(ref)
            inside += time.thread_time() - start
        assert counter.flush(30.0)
        threads1, pg1 = _threads({me}), _pg(url)
        per = 1e6 / items
        result.update(
            done_us=inside * per,
            counter_thread_us=(threads1[0] - threads0[0]) * per,
            wakeups_per_task=(threads1[1] - threads0[1]) / items,
            pg_us=(pg1 - pg0) * per,
            writes=WRITE_STATS.writes - writes0,
        )

    # The reporting thread stands for a worker's task thread; this thread
    # waits, asleep, and its CPU is not counted.
    thread = threading.Thread(target=report)
    thread.start()
    thread.join()
    counter.close()

    async def check() -> int:
        async with app:
            return (await app.store.get_job(job_id)).stage(STAGE).completed_items

    if (done := asyncio.run(check())) != items:
        raise RuntimeError(f"{done} items counted, not {items}")
    result["total_us"] = result["done_us"] + result["counter_thread_us"] + result["pg_us"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds; print each run and the medians."""
    parser = argparse.ArgumentParser(description="a task counter's CPU per task")
    parser.add_argument("--rate", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--flush-interval", type=float, default=0.1, help="the app's flush interval, seconds"
    )
    parser.add_argument("--compare", type=Path, help="another module defining TaskCounter")
    args = parser.parse_args(argv)
    modules = {"package": package_counter}
    if args.compare is not None:
        modules["compare"] = _load(args.compare)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in modules}
    with backend("postgres") as url, tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for name, module in modules.items():
                result = one(module, url, folder, args.rate, args.seconds, args.flush_interval)
                runs[name].append(result)
                print(json.dumps({"counter": name} | result), flush=True)
    medians = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    print(json.dumps({"medians": medians}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
