"""Celery bare against Celery with jobtrack's integration, interleaved, with
the CPU each costs per task.

Usage::

    python -m bench.celery_cpu [--tasks 10000] [--runs 3] [--compare SRC]

Runs ``celery-bare`` and ``celery-jobtrack`` of :mod:`bench.integrations`
one after the other, ``--runs`` times each (bare, tracked, bare, tracked...),
without the progress reader. For each run: items/s (as
:mod:`bench.integrations` counts them), and the CPU seconds (user + system,
from ``/proc``) spent from the first send to the completion seen by the
worker's main process, by its pool processes (split into their main thread
and their other threads, with the other threads' voluntary context
switches: their wake-ups), and by the PostgreSQL backends serving the
worker's processes (not the completion poll's). ``--compare SRC`` adds a
third configuration, ``celery-jobtrack-compare``: tracked, with workers
that import ``jobtrack`` from the folder ``SRC`` (an older version's
``src``, say). Prints one JSON line per run, then the medians per
configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.integrations import Run, _check, _children, _wait_complete, _workers, produce
from bench.progress import backend

TICK = os.sysconf("SC_CLK_TCK")
COMPARE = "celery-jobtrack-compare"


def _stat(path: str) -> tuple[float, int]:
    """CPU seconds (user + system) and voluntary context switches of one
    process or thread; zeros when it is gone."""
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


def _threads(pid: int) -> dict[str, tuple[float, int]]:
    """By ``pid:tid``, each thread's CPU seconds and voluntary switches."""
    found: dict[str, tuple[float, int]] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            found[f"{pid}:{tid}"] = _stat(f"/proc/{pid}/task/{tid}")
    return found


def _ports(pids: Sequence[int]) -> set[int]:
    """The local TCP ports of the sockets these processes hold."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _backends(url: str, clients: Sequence[int]) -> list[int]:
    """The PostgreSQL backends of the run's database serving ``clients``."""
    database = url.rsplit("/", 1)[1]
    ports = _ports(clients)
    with psycopg.connect(url.rsplit("/", 1)[0] + "/test", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return [int(pid) for pid, port in rows if port in ports]


def snapshot(main: int, url: str) -> dict[str, Any]:
    """CPU and switches of the worker's processes and threads, and of the
    store's backends, now."""
    pool = _children(main)
    threads: dict[str, tuple[float, int]] = {}
    for pid in pool:
        threads |= _threads(pid)
    return {
        "main": _stat(f"/proc/{main}")[0],
        "pool": pool,
        "threads": threads,
        "pg": {pid: _stat(f"/proc/{pid}")[0] for pid in _backends(url, [main, *pool])},
    }


def delta(before: dict[str, Any], after: dict[str, Any], items: int) -> dict[str, Any]:
    """CPU per task (µs) of each part between two snapshots."""
    main = after["main"] - before["main"]
    pool_main = pool_other = 0.0
    other_switches = 0
    for name, (cpu, switches) in after["threads"].items():
        pid, tid = name.split(":")
        old_cpu, old_switches = before["threads"].get(name, (0.0, 0))
        if pid == tid:
            pool_main += cpu - old_cpu
        else:
            pool_other += cpu - old_cpu
            other_switches += switches - old_switches
    pg = sum(cpu - before["pg"].get(pid, 0.0) for pid, cpu in after["pg"].items())
    per = 1e6 / items
    return {
        "main_us": main * per,
        "pool_main_us": pool_main * per,
        "pool_threads_us": pool_other * per,
        "pool_thread_wakeups_per_task": other_switches / items,
        "pg_us": pg * per,
        "total_us": (main + pool_main + pool_other + pg) * per,
    }


@dataclass
class CompareRun(Run):
    """A tracked run whose workers import ``jobtrack`` from ``source``."""

    source: str = ""

    def env(self) -> dict[str, str]:
        """The workers' environment, ``source`` first on the path."""
        env = super().env()
        env["PYTHONPATH"] = f"{self.source}{os.pathsep}{env['PYTHONPATH']}"
        return env


def one(config: str, items: int, url: str, folder: str, source: str = "") -> dict[str, Any]:
    """One run of ``config`` (``celery-jobtrack`` with workers importing
    ``jobtrack`` from ``source``, if given): items/s and CPU per task."""
    run = (
        CompareRun(config, items, url, folder, source=source)
        if source
        else Run(config, items, url, folder)
    )
    with _workers(run, Path(folder)) as workers:
        main = workers.processes[0].pid
        before = snapshot(main, url)
        began = time.time()
        job_id = produce(run, lambda _: None)
        seen = _wait_complete(run, job_id, 600.0)
        after = snapshot(main, url)
        _check(run, job_id)
    return {"config": config, "items_per_second": items / (seen - began)} | delta(
        before, after, items
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the interleaved runs; print each and the medians."""
    parser = argparse.ArgumentParser(description="Celery bare vs tracked, CPU per task")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="another jobtrack source folder")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {"celery-bare": [], "celery-jobtrack": []}
    if args.compare is not None:
        results[COMPARE] = []
    with backend("postgres") as url, tempfile.TemporaryDirectory() as folder:
        for _ in range(args.runs):
            for config, runs in results.items():
                if config == COMPARE:
                    source = str(args.compare.resolve())
                    result = one("celery-jobtrack", args.tasks, url, folder, source)
                    result["config"] = COMPARE
                else:
                    result = one(config, args.tasks, url, folder)
                runs.append(result)
                print(json.dumps(result), flush=True)
    medians = {
        config: {
            name: statistics.median(r[name] for r in runs) for name in runs[0] if name != "config"
        }
        for config, runs in results.items()
    }
    print(json.dumps({"medians": medians}, indent=1))
    bare = medians["celery-bare"]["items_per_second"]
    for config in results:
        if config != "celery-bare":
            ratio = medians[config]["items_per_second"] / bare
            print(f"{config}/celery-bare, ratio of medians: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
