"""A framework bare against the same framework with jobtrack's integration,
interleaved, with the CPU each costs per task: what the throughput ratio
of :mod:`bench.integrations` comes from, told apart from a noisy machine.

Usage::

    python -m bench.integrations_cpu --framework dramatiq [--tasks 10000]
                                     [--rounds 3] [--compare SRC]

Each round runs ``<framework>-bare`` and ``<framework>-jobtrack`` of
:mod:`bench.integrations` once each (and, with ``--compare SRC``,
``<framework>-jobtrack-compare``: tracked, with workers importing
``jobtrack`` from the folder ``SRC``, an older version's ``src`` say),
without the progress reader. For each run: items/s (as
:mod:`bench.integrations` counts them) and the CPU (user + system, from
``/proc``), in µs per task, spent from the first send to the completion
seen by:

- ``workers_us``: every process of the workers' trees (a process that
  ended meanwhile, such as an RQ work horse, through its parent's
  children's time);
- ``roots_us``: of those, the roots' own (without their children's): the
  process every task passes through where a framework has one (Celery's
  prefork main process, RQ's worker);
- ``pg_us``: the PostgreSQL backends serving the workers' processes;
- ``pg_other_us``: the other backends of the run's database (the
  producer's ledger writes, the completion poll), sampled every 50 ms so
  that a backend that ended meanwhile counts up to its last sample;
- ``bench_us``: this process (the producer and the completion poll);
- ``servers_us``: the Redis and RabbitMQ servers, whole (other clients of
  the machine count too: the noisiest figure);
- ``total_us``: workers and PostgreSQL backends.

Prints one JSON line per run, then the medians per configuration and the
ratio of the median items/s and of the median ``total_us`` to the bare
run's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.celery_cpu import _backends
from bench.integrations import (
    FLOORS,
    STALL_TIMEOUT,
    Run,
    _check,
    _children,
    _wait_complete,
    _workers,
    produce,
)
from bench.progress import backend

TICK = os.sysconf("SC_CLK_TCK")
SERVERS = ("redis-server", "beam.smp")
"""The names of the broker processes whose CPU is told (whole)."""


def _cpu(pid: int, *, children: bool = True) -> float:
    """CPU seconds (user + system) of ``pid``, with those of its children
    that ended and were waited for; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def _tree(pids: Sequence[int]) -> list[int]:
    """``pids`` and all their descendants alive now."""
    found: list[int] = []
    waiting = list(pids)
    while waiting:
        pid = waiting.pop()
        found.append(pid)
        waiting.extend(_children(pid))
    return found


def _all_backends(url: str) -> list[int]:
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/test", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return [int(pid) for (pid,) in rows]


class BackendSampler:
    """Samples the CPU of every backend of a database every 50 ms, in a
    thread: :attr:`seen` holds each one's first and last CPU seen."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: dict[int, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BackendSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        for pid in _all_backends(self.url):
            cpu = _cpu(pid, children=False)
            if cpu:
                first = self.seen.get(pid, (cpu, cpu))[0]
                self.seen[pid] = (first, cpu)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def spent(self, started: dict[int, float], leave: set[int]) -> float:
        """CPU seconds the backends not in ``leave`` spent since the
        sampler started (a backend that existed then, ``started``, from there)."""
        return sum(
            last - started.get(pid, 0.0) for pid, (_, last) in self.seen.items() if pid not in leave
        )


def _servers() -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/comm") as f:
                if f.read().strip() in SERVERS:
                    found.append(int(name))
    return found


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Snapshot:
    """CPU seconds of each part of a run, at one moment."""

    workers: dict[int, float]
    roots: dict[int, float]
    pg: dict[int, float]
    servers: dict[int, float]
    bench: float

    @classmethod
    def take(cls, roots: Sequence[int], url: str) -> Snapshot:
        """The CPU of the workers' trees (rooted at ``roots``), of their
        backends in ``url``'s database, of the servers and of this process."""
        tree = _tree(roots)
        return cls(
            workers={pid: _cpu(pid) for pid in tree},
            roots={pid: _cpu(pid, children=False) for pid in roots},
            pg={pid: _cpu(pid, children=False) for pid in _backends(url, tree)},
            servers={pid: _cpu(pid, children=False) for pid in _servers()},
            bench=_self_cpu(),
        )

    def since(self, before: Snapshot, items: int) -> dict[str, float]:
        """µs per task of each part between ``before`` and this one. A
        process of the tree is counted from 0 when it started meanwhile; one
        that ended meanwhile is in its parent's children's time, so the
        parent counts it (a root that ended is lost: none does in a timed run)."""
        per = 1e6 / items

        def spent(now: dict[int, float], then: dict[int, float]) -> float:
            return sum(cpu - then.get(pid, 0.0) for pid, cpu in now.items())

        kept = {pid: cpu for pid, cpu in before.workers.items() if pid in self.workers}
        workers = spent(self.workers, kept)
        pg = spent(self.pg, before.pg)
        return {
            "workers_us": workers * per,
            "roots_us": spent(self.roots, before.roots) * per,
            "pg_us": pg * per,
            "bench_us": (self.bench - before.bench) * per,
            "servers_us": spent(self.servers, before.servers) * per,
            "total_us": (workers + pg) * per,
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
    """One run of ``config`` (tracked, with workers importing ``jobtrack``
    from ``source`` if given): items/s and CPU per task.

    :raises NotExact: counts not exactly ``items``.
    :raises TimeoutError: workers that did not start, a run that did not end.
    """
    run = (
        CompareRun(config, items, url, folder, source=source)
        if source
        else Run(config, items, url, folder)
    )
    with _workers(run, Path(folder)) as workers:
        roots = [process.pid for process in workers.processes]
        before = Snapshot.take(roots, url)
        started = {pid: _cpu(pid, children=False) for pid in _all_backends(url)}
        load = os.getloadavg()[0]
        with BackendSampler(url) as sampler:
            began = time.time()
            job_id = produce(run, lambda _: None)
            seen = _wait_complete(run, job_id, STALL_TIMEOUT)
            after = Snapshot.take(roots, url)
        _check(run, job_id)
    other = sampler.spent(started, set(after.pg)) * 1e6 / items
    result = {"items_per_second": items / (seen - began), "load": load}
    return result | after.since(before, items) | {"pg_other_us": other}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the interleaved rounds; print each run and the medians."""
    parser = argparse.ArgumentParser(description="A framework bare vs tracked, CPU per task")
    parser.add_argument("--framework", choices=sorted(FLOORS), required=True)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="another jobtrack source folder")
    args = parser.parse_args(argv)
    bare, tracked = f"{args.framework}-bare", f"{args.framework}-jobtrack"
    compare = f"{tracked}-compare"
    results: dict[str, list[dict[str, Any]]] = {bare: [], tracked: []}
    if args.compare is not None:
        results[compare] = []
    with backend("postgres") as url, tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for config, runs in results.items():
                if config == compare:
                    source = str(args.compare.resolve())
                    result = one(tracked, args.tasks, url, folder, source)
                else:
                    result = one(config, args.tasks, url, folder)
                runs.append(result)
                print(json.dumps({"config": config} | result), flush=True)
    medians = {
        config: {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        for config, runs in results.items()
    }
    print(json.dumps({"medians": medians}, indent=1))
    for config in results:
        if config != bare:
            speed = medians[config]["items_per_second"] / medians[bare]["items_per_second"]
            cpu = medians[bare]["total_us"] / medians[config]["total_us"]
            print(f"{config}/{bare}: items/s {speed:.3f}, bare/tracked CPU per task {cpu:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
