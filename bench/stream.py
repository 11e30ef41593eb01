"""SSE fan-out: 100 clients on ``GET /api/stream`` while 10 jobs progress.

A real ``jobtrack serve`` runs in a subprocess on the store (SQLite, the
embedded default, and PostgreSQL); this process writes the increments (as
workers would: one item of one of the 10 jobs every 50 ms) and runs the 100
clients. Measured: for every increment and every client, the time from the
increment's commit to the client receiving the job with that count (or a
later one): p50 and p99. Medians over ``--runs`` runs.

Run: ``python -m bench.stream [--runs 3] [--clients 100] [--jobs 10]``.
Results: bench/results/stream.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from bench.progress import backend
from bench.report import RESULTS, summary, table, write
from jobtrack.store import JobStore, open_store

STAGE = "work"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _client(
    url: str, seen: dict[tuple[str, int], float], ready: asyncio.Event, stop: asyncio.Event
) -> None:
    """One dashboard: records when each (job, count) first reached it."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None)) as client,
        aconnect_sse(client, "GET", "/api/stream") as source,
    ):
        async for event in source.aiter_sse():
            now = time.perf_counter()
            if event.event == "snapshot":
                ready.set()
                continue
            job = json.loads(event.data)
            done = job["stages"][STAGE]["completed_items"]
            key = (job["id"], done)
            if key not in seen:
                seen[key] = now
            if stop.is_set():
                return


async def _run(
    url: str, store: JobStore, *, clients: int, jobs: int, seconds: float
) -> dict[str, Any]:
    ids = [(await store.create_job("bench-stream", [STAGE])).id for _ in range(jobs)]
    seen: list[dict[tuple[str, int], float]] = [{} for _ in range(clients)]
    readies = [asyncio.Event() for _ in range(clients)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_client(url, seen[n], readies[n], stop)) for n in range(clients)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
    written: dict[tuple[str, int], float] = {}
    counts = dict.fromkeys(ids, 0)
    started = time.perf_counter()
    n = 0
    while time.perf_counter() - started < seconds:
        job_id = ids[n % jobs]
        await store.increment(job_id, STAGE)
        counts[job_id] += 1
        written[(job_id, counts[job_id])] = time.perf_counter()  # committed
        n += 1
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)  # the last writes reach everyone
    stop.set()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    delays, missing = [], 0
    for client_seen in seen:
        for (job_id, count), at in written.items():
            # The first state of the job at or past this count that reached the client.
            later = [t for (j, c), t in client_seen.items() if j == job_id and c >= count]
            if later:
                delays.append(min(later) - at)
            else:
                missing += 1
    delays.sort()
    return {
        "increments": len(written),
        "samples": len(delays),
        "missing": missing,
        "p50_ms": statistics.median(delays) * 1000,
        "p99_ms": delays[int(len(delays) * 0.99) - 1] * 1000,
        "max_ms": delays[-1] * 1000,
    }


@contextlib.contextmanager
def serving(store_url: str, folder: str) -> Iterator[tuple[str, int]]:
    """A ``jobtrack serve`` on ``store_url`` with ``folder`` as its data
    directory, answering: its URL and process id; stopped after."""
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobtrack",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            folder,
            "--store",
            store_url,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(timeout=15)


def _measure(store_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start a server on ``store_url``, measure, stop it."""
    with tempfile.TemporaryDirectory() as folder, serving(store_url, folder) as (url, _):
        return asyncio.run(_against(url, store_url, args))


async def _against(url: str, store_url: str, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(store_url)
    try:
        return await _run(url, store, clients=args.clients, jobs=args.jobs, seconds=args.seconds)
    finally:
        await store.aclose()


def main(argv: list[str] | None = None) -> int:
    """Measure the stream's fan-out; write bench/results/stream.*."""
    parser = argparse.ArgumentParser(description="SSE fan-out delay.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for name in ("sqlite", "postgres"):
        samples = []
        for _ in range(args.runs):
            with backend(name) as url:
                samples.append(_measure(url, args))
            print(name, samples[-1], flush=True)
        results[name] = {
            key: summary([s[key] for s in samples])
            for key in ("p50_ms", "p99_ms", "max_ms", "increments", "samples", "missing")
        }
    rows = [
        [
            name,
            f"{r['increments']['median']:.0f}",
            f"{r['samples']['median']:,.0f}",
            f"{r['p50_ms']['median']:.0f}",
            f"{r['p99_ms']['median']:.0f}",
            f"{r['max_ms']['median']:.0f}",
            f"{r['missing']['max']:.0f}",
        ]
        for name, r in results.items()
    ]
    markdown = (
        "# Live stream fan-out\n\n"
        f"{args.clients} clients on `GET /api/stream` of one `jobtrack serve` while {args.jobs}"
        f" jobs progress (an increment every 50 ms, for {args.seconds:g} s); the delay from an"
        " increment's commit to each client receiving that count. Medians of"
        f" {args.runs} runs; clients, writer and server share the machine's"
        f" {os.cpu_count()} cores.\n\n"
        + table(
            ["store", "increments", "deliveries", "p50 (ms)", "p99 (ms)", "max (ms)", "missed"],
            rows,
        )
    )
    write(
        "stream",
        {"clients": args.clients, "jobs": args.jobs, "results": results},
        markdown,
        out=args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
