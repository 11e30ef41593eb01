"""Dramatiq bare against Dramatiq with jobtrack's middleware, interleaved.

Usage::

    python -m bench.dramatiq_acks [--tasks 10000] [--rounds 3] [--read]

Each round runs ``dramatiq-bare``, ``dramatiq-jobtrack``, then (with
``--read``) ``dramatiq-jobtrack`` with the progress reader of
:mod:`bench.integrations` (a forked process reading the job every 2 ms, as
its tracked runs at their largest N have), with the same workers, producer,
probe and checks, so that all see the same load on the machine. Besides
items/s, each run reports the CPU milliseconds per item of the 2 worker
processes (all their threads, from ``/proc/PID/stat``, from the first send
to the completion seen), of this process (the producer and the completion
poll) and of the reader.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.integrations import (
    STALL_TIMEOUT,
    Run,
    _check,
    _reader,
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


def one(config: str, n: int, url: str, folder: str, *, read: bool = False) -> dict[str, Any]:
    """One timed run of ``config`` (with the progress reader if ``read``):
    items/s and CPU per item.

    :raises NotExact: counts not exactly ``n``.
    :raises TimeoutError: workers that did not start, a run that did not end.
    """
    run = Run(config, n, url, folder)
    with _workers(run, Path(folder)) as workers:
        context = multiprocessing.get_context("fork")
        ours, theirs = context.Pipe()
        reader = context.Process(target=_reader, args=(run, theirs), daemon=True)
        if read:
            reader.start()
        before = sum(_cpu(pid) for pid in workers.pids)
        mine = _self_cpu()
        began = time.time()
        job_id = produce(run, ours.send if read else lambda _: None)
        seen = _wait_complete(run, job_id, STALL_TIMEOUT)
        workers_cpu = sum(_cpu(pid) for pid in workers.pids) - before
        mine = _self_cpu() - mine
        reader_cpu = 0.0
        if read and reader.pid is not None:
            reader_cpu = _cpu(reader.pid)
            ours.send(b"stop")
            ours.recv()
            reader.join(60)
        _check(run, job_id)
    return {
        "items_per_second": n / (seen - began),
        "worker_cpu_ms_per_item": workers_cpu * 1000 / n,
        "producer_cpu_ms_per_item": mine * 1000 / n,
        "reader_cpu_ms_per_item": reader_cpu * 1000 / n,
        "load": os.getloadavg()[0],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds and print each run and the medians."""
    parser = argparse.ArgumentParser(description="Dramatiq bare and tracked, interleaved")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--read", action="store_true", help="also tracked with the reader")
    args = parser.parse_args(argv)
    configs = [(CONFIGS[0], False), (CONFIGS[1], False)]
    if args.read:
        configs.append((CONFIGS[1], True))
    results: dict[str, list[dict[str, Any]]] = {}
    with backend("postgres") as url, tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for config, read in configs:
                name = config + ("+read" if read else "")
                result = one(config, args.tasks, url, folder, read=read)
                results.setdefault(name, []).append(result)
                print(name, {k: round(v, 3) for k, v in result.items()}, flush=True)
    bare = results[CONFIGS[0]]
    for name, runs in results.items():
        median = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        ratios = [
            round(t["items_per_second"] / b["items_per_second"], 3)
            for b, t in zip(bare, runs, strict=True)
        ]
        ratio = median["items_per_second"] / statistics.median(r["items_per_second"] for r in bare)
        print(f"median {name} {median} ratio of medians {ratio:.3f}, per round {ratios}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
