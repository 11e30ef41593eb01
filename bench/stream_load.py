"""The stream under load: 200 clients on ``GET /api/stream`` while 2,000 jobs
are active, some clients reading slowly, and ``/healthz`` probed throughout.

A real ``jobtrack serve`` runs in a subprocess on SQLite; this process writes
(as workers would: ``--rate`` increments a second over the 2,000 jobs) and
runs the clients: ``--slow`` of them read 1 KiB a second through a 4 KiB
socket buffer, the others read as fast as they can. A separate process
probes ``/healthz`` every 50 ms, so that the clients' work here does not
count as the server's latency. Measured: ``/healthz`` p50, p99 and max; the
server's resident memory before the clients connect, at its peak (the
kernel's high-water mark, ``VmHWM``) and 5 s after they left; and how many
snapshots and job events the fast clients received. Medians over ``--runs``.

Run: ``python -m bench.stream_load [--runs 3] [--clients 200] [--slow 50] [--jobs 2000]``.
Results: bench/results/stream_load.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import socket
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from bench.report import RESULTS, summary, table, write
from bench.stream import serving
from jobtrack.store import JobStore, open_store

STAGE = "work"
PROBE_EVERY = 0.05


def _rss_kib(pid: int) -> dict[str, int]:
    """The process's resident memory now and at its peak, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def _probe(url: str, seconds: float, out: Connection) -> None:
    """In a process of its own: ``/healthz`` latencies, in seconds."""
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            before = time.perf_counter()
            client.get("/healthz").raise_for_status()
            latencies.append(time.perf_counter() - before)
            time.sleep(PROBE_EVERY)
    out.send(latencies)
    out.close()


async def _fast(client: httpx.AsyncClient, counts: dict[str, int], stop: asyncio.Event) -> None:
    """A dashboard that keeps up: counts the events it receives."""
    async with client.stream("GET", "/api/stream") as response:
        rest = b""
        async for chunk in response.aiter_bytes():
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                if line.startswith(b"event: "):
                    kind = line[7:].decode().strip()
                    counts[kind] = counts.get(kind, 0) + 1
            if stop.is_set():
                return


async def _slow(port: int, stop: asyncio.Event) -> None:
    """A client on a slow link: 1 KiB a second through a small socket buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        while not stop.is_set():
            if not await reader.read(1024):
                return  # the server cut it loose
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        writer.close()


async def _write(store: JobStore, ids: list[str], rate: float, stop: asyncio.Event) -> int:
    """Increments over random jobs at ``rate`` a second; returns how many."""
    written, tick = 0, 0.05
    while not stop.is_set():
        for job_id in random.sample(ids, max(1, round(rate * tick))):
            await store.increment(job_id, STAGE)
            written += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)
    return written


async def _run(url: str, pid: int, store: JobStore, args: argparse.Namespace) -> dict[str, Any]:
    ids = []
    for _ in range(args.jobs):  # active: in progress, none near its end
        job = await store.create_job("bench-stream-load", [STAGE])
        await store.raise_total(job.id, STAGE, by=1_000_000)
        await store.increment(job.id, STAGE)
        ids.append(job.id)
    await asyncio.sleep(1.0)  # the feed has passed these on
    before = _rss_kib(pid)["VmRSS"]
    mine, theirs = multiprocessing.get_context("spawn").Pipe(duplex=False)
    prober = multiprocessing.get_context("spawn").Process(
        target=_probe, args=(url, args.seconds, theirs)
    )
    prober.start()
    stop = asyncio.Event()
    counts: list[dict[str, int]] = [{} for _ in range(args.clients - args.slow)]
    port = int(url.rsplit(":", 1)[1])
    # One client for all (one connection each): making 150 would take seconds of this loop.
    shared = httpx.AsyncClient(
        base_url=url,
        timeout=httpx.Timeout(30, read=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
    )
    clients = [asyncio.create_task(_fast(shared, c, stop)) for c in counts]
    clients += [asyncio.create_task(_slow(port, stop)) for _ in range(args.slow)]
    writer = asyncio.create_task(_write(store, ids, args.rate, stop))
    latencies: list[float] = await asyncio.to_thread(mine.recv)
    prober.join()
    stop.set()
    written = await writer
    for task in clients:
        task.cancel()
    failed = 0
    for task in clients:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await task
            except Exception:  # counted: a client the server cut loose
                failed += 1
    await shared.aclose()
    await asyncio.sleep(5.0)
    memory = _rss_kib(pid)
    latencies.sort()
    return {
        "healthz_p50_ms": statistics.median(latencies) * 1000,
        "healthz_p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "healthz_max_ms": latencies[-1] * 1000,
        "probes": len(latencies),
        "rss_before_mb": before / 1024,
        "rss_peak_mb": memory["VmHWM"] / 1024,
        "rss_after_mb": memory["VmRSS"] / 1024,
        "snapshots": sum(c.get("snapshot", 0) for c in counts),
        "job_events": sum(c.get("job", 0) for c in counts),
        "increments": written,
        "clients_failed": failed,
    }


async def _against(url: str, pid: int, store_url: str, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(store_url)
    try:
        return await _run(url, pid, store, args)
    finally:
        await store.aclose()


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        store_url = f"sqlite:///{folder}/jobtrack.db"
        with serving(store_url, folder) as (url, pid):
            return asyncio.run(_against(url, pid, store_url, args))


KEYS = (
    "healthz_p50_ms",
    "healthz_p99_ms",
    "healthz_max_ms",
    "rss_before_mb",
    "rss_peak_mb",
    "rss_after_mb",
    "snapshots",
    "job_events",
    "increments",
    "probes",
    "clients_failed",
)


def main(argv: list[str] | None = None) -> int:
    """Measure the stream under load; write bench/results/stream_load.*."""
    parser = argparse.ArgumentParser(description="The stream with many clients and jobs.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="increments a second")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    samples = []
    for _ in range(args.runs):
        samples.append(_measure(args))
        print(samples[-1], flush=True)
    results = {key: summary([s[key] for s in samples]) for key in KEYS}
    rows = [
        [key, f"{r['median']:,.1f}", f"{r['min']:,.1f}", f"{r['max']:,.1f}"]
        for key, r in results.items()
    ]
    markdown = (
        "# The live stream under load\n\n"
        f"{args.clients} clients on `GET /api/stream` of one `jobtrack serve` (SQLite), {args.slow}"
        f" of them reading 1 KiB/s, while {args.jobs:,} jobs are active and {args.rate:g}"
        f" increments a second land on them, for {args.seconds:g} s; `/healthz` probed every"
        f" {PROBE_EVERY * 1000:.0f} ms from a process of its own. Medians (min-max) of"
        f" {args.runs} runs; clients, writer and server share the machine's"
        f" {os.cpu_count()} cores.\n\n" + table(["measure", "median", "min", "max"], rows)
    )
    write(
        "stream_load",
        {"clients": args.clients, "slow": args.slow, "jobs": args.jobs, "results": results},
        markdown,
        out=args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
