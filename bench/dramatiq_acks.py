"""Dramatiq bare against Dramatiq with jobtrack's middleware, interleaved.

Usage::

    python -m bench.dramatiq_acks [--tasks 10000] [--rounds 3]

Each round runs ``dramatiq-bare`` then ``dramatiq-jobtrack`` of
:mod:`bench.integrations` (the same workers, producer, probe and checks),
so that both see the same load on the machine. Besides items/s, each run
reports the CPU seconds per item of the 2 worker processes (all their
threads, from ``/proc/PID/stat``, from the first send to the completion
seen) and of this process (the producer and the completion poll).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.integrations import (
    RUN_TIMEOUT,
    Run,
    _check,
    _wait_complete,
    _workers,
    produce,
)
from bench.progress import backend

CONFIGS = ("dramatiq-bare", "dramatiq-jobtrack")
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """User and system CPU seconds of ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one(config: str, n: int, url: str, folder: str) -> dict[str, Any]:
    """One timed run of ``config``: items/s and CPU per item.

    :raises NotExact: counts not exactly ``n``.
    :raises TimeoutError: workers that did not start, a run that did not end.
    """
    run = Run(config, n, url, folder)
    with _workers(run, Path(folder)) as workers:
        before = sum(_cpu(pid) for pid in workers.pids)
        mine = _self_cpu()
        began = time.time()
        job_id = produce(run, lambda _: None)
        seen = _wait_complete(run, job_id, RUN_TIMEOUT)
        workers_cpu = sum(_cpu(pid) for pid in workers.pids) - before
        mine = _self_cpu() - mine
        _check(run, job_id)
    return {
        "items_per_second": n / (seen - began),
        "worker_cpu_ms_per_item": workers_cpu * 1000 / n,
        "producer_cpu_ms_per_item": mine * 1000 / n,
        "load": os.getloadavg()[0],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds and print each run and the medians."""
    parser = argparse.ArgumentParser(description="Dramatiq bare and tracked, interleaved")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    with backend("postgres") as url, tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for config in CONFIGS:
                result = one(config, args.tasks, url, folder)
                results[config].append(result)
                print(config, {k: round(v, 3) for k, v in result.items()}, flush=True)
    medians = {
        c: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for c, runs in results.items()
    }
    for config, median in medians.items():
        print("median", config, {k: round(v, 3) for k, v in median.items()}, flush=True)
    bare, tracked = (medians[c]["items_per_second"] for c in CONFIGS)
    ratios = [
        t["items_per_second"] / b["items_per_second"]
        for b, t in zip(results[CONFIGS[0]], results[CONFIGS[1]], strict=True)
    ]
    print(
        f"ratio of medians {tracked / bare:.3f}; per round",
        [round(r, 3) for r in ratios],
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
