"""Tracked items per second through RabbitMQ, against a bare aio-pika loop.

One producer process publishes ``--items`` messages (100 confirms in flight)
while 1 or 4 consumer processes take them from one durable quorum queue
with the same prefetch and ack each one manually:

- ``bare``: aio-pika alone; a message is acked as soon as it arrives;
- ``tracked``: jobtrack's ``RabbitMQBroker``, a stage message decoded and
  validated, the item reported to a coalescing ``ProgressTracker`` (with its
  item key) on PostgreSQL, and the ack sent once the item is durable: a
  no-op stage, so what is measured is the tracking system's own cost.

``end-to-end`` times the first publish to the last ack, with producer and
consumers running at once; ``drain`` fills the queue first and times the
consumers alone (a harder test: the producer no longer sets the pace). The
tracked runs check that the stage ends with exactly ``--items`` counted.

Run: ``python -m bench.broker [--runs 3] [--items 20000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import aio_pika

from bench.progress import backend
from bench.report import RESULTS, summary, table, write
from jobtrack.broker.rabbitmq import RabbitMQBroker
from jobtrack.jobs.messages import ItemMessage, decode_item, encode_item
from jobtrack.store import open_store
from jobtrack.tracking import ProgressTracker

AMQP_URL = os.environ.get("JOBTRACK_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
STAGE = "noop"
WINDOW = 100  # publisher confirms in flight
ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


@dataclass(frozen=True, slots=True)
class Setup:
    kind: str  # bare | tracked
    queue: str
    store_url: str
    job_id: str
    items: int
    prefetch: int


def _bodies(setup: Setup) -> list[bytes]:
    return [
        encode_item(ItemMessage(setup.job_id, "collection-scan", STAGE, f"i{n}"))
        for n in range(setup.items)
    ]


async def _publish_bare(setup: Setup) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    window = asyncio.Semaphore(WINDOW)

    async def one(body: bytes) -> None:
        async with window:
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=setup.queue,
                mandatory=True,
            )

    await asyncio.gather(*(one(body) for body in _bodies(setup)))
    await connection.close()


async def _publish_tracked(setup: Setup) -> None:
    broker = RabbitMQBroker(AMQP_URL, confirm_window=WINDOW)
    await broker.publish_many(setup.queue, _bodies(setup))
    await broker.aclose()


def producer(setup: Setup, go: Any) -> None:
    """Publish every message once ``go`` is set."""
    go.wait()
    asyncio.run(_publish_bare(setup) if setup.kind == "bare" else _publish_tracked(setup))


@dataclass(frozen=True, slots=True)
class Signals:
    """Events shared with a consumer process."""

    ready: Any  # the consumer is connected
    start: Any  # start consuming
    stop: Any  # stop and close


async def _wait(event: Any) -> None:
    while not event.is_set():  # noqa: ASYNC110 (a multiprocessing event, not an asyncio one)
        await asyncio.sleep(0.005)


async def _consume_bare(setup: Setup, acked: Synchronized[int], signals: Signals) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=setup.prefetch)
    queue = await channel.declare_queue(setup.queue, durable=True, arguments=ARGUMENTS)

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        acked.value += 1

    signals.ready.set()
    await _wait(signals.start)
    await queue.consume(handle)
    await _wait(signals.stop)
    await connection.close()


async def _consume_tracked(setup: Setup, acked: Synchronized[int], signals: Signals) -> None:
    broker = RabbitMQBroker(AMQP_URL)
    await broker.connect()
    store = open_store(setup.store_url)
    await store.get_job(setup.job_id)  # connected
    tracker = ProgressTracker(store)

    async def handle(delivery: Any) -> None:
        message = decode_item(delivery.body)
        await tracker.add(message.job_id, message.stage, item_key=message.key)
        await delivery.ack()
        acked.value += 1

    signals.ready.set()
    await _wait(signals.start)
    await broker.consume(setup.queue, handle, prefetch=setup.prefetch)
    await _wait(signals.stop)
    await broker.aclose()
    await tracker.flush(max_wait=10)
    await store.aclose()


def consumer(setup: Setup, acked: Synchronized[int], signals: Signals) -> None:
    """Consume once told to, until told to stop, counting acks into ``acked``."""
    run = _consume_bare if setup.kind == "bare" else _consume_tracked
    asyncio.run(run(setup, acked, signals))


async def _declare(queue: str) -> None:
    # The tracked side's own declaration (dead-letter queue, delivery limit)
    # happens in RabbitMQBroker; the bare side declares a plain quorum queue.
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.declare_queue(queue, durable=True, arguments=ARGUMENTS)
    await connection.close()


async def _delete(queue: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    for name in (queue, f"{queue}.dead"):
        await channel.queue_delete(name)
    await connection.close()


async def _new_job(url: str, items: int) -> str:
    store = open_store(url)
    job = await store.create_job("bench", [STAGE])
    await store.raise_total(job.id, STAGE, by=items)
    await store.seal_total(job.id, STAGE)
    await store.aclose()
    return job.id


async def _counted(url: str, job_id: str) -> int:
    store = open_store(url)
    job = await store.get_job(job_id)
    await store.aclose()
    return job.stage(STAGE).completed_items


def measure(  # noqa: PLR0917 - one configuration of the matrix
    kind: str, mode: str, workers: int, store_url: str, items: int, prefetch: int
) -> float:
    """Items per second of one configuration (and, tracked, a check of the count)."""
    context = multiprocessing.get_context("spawn")
    queue = f"bench.{uuid.uuid4().hex[:8]}"
    job_id = asyncio.run(_new_job(store_url, items)) if kind == "tracked" else ""
    setup = Setup(kind, queue, store_url, job_id, items, prefetch)
    if kind == "bare":
        asyncio.run(_declare(queue))
    go, start, stop = context.Event(), context.Event(), context.Event()
    counters = [context.Value("q", 0, lock=False) for _ in range(workers)]
    signals = [Signals(context.Event(), start, stop) for _ in range(workers)]
    publisher = context.Process(target=producer, args=(setup, go))
    publisher.start()
    if mode == "drain":  # fill the queue first
        go.set()
        publisher.join()
    consumers = [
        context.Process(target=consumer, args=(setup, counters[w], signals[w]))
        for w in range(workers)
    ]
    for process in consumers:
        process.start()
    for signal in signals:
        if not signal.ready.wait(60):
            raise RuntimeError("a consumer did not connect")
    started = time.perf_counter()
    start.set()
    go.set()
    while sum(c.value for c in counters) < items:
        if not all(p.is_alive() for p in consumers):
            raise RuntimeError("a consumer died")
        time.sleep(0.005)
    seconds = time.perf_counter() - started
    stop.set()
    for process in [*consumers, publisher]:
        process.join(60)
    asyncio.run(_delete(queue))
    if kind == "tracked":
        counted = asyncio.run(_counted(store_url, job_id))
        if counted != items:
            raise AssertionError(f"counted {counted} of {items} items")
    return items / seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write bench/results/broker.{json,md}."""
    parser = argparse.ArgumentParser(description="Tracked items/s through RabbitMQ.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--prefetch", type=int, default=500)
    parser.add_argument("--workers", default="1,4")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs: dict[str, list[float]] = {}
    with backend("postgres") as store_url:
        for _ in range(args.runs):
            for mode in ("end-to-end", "drain"):
                for workers in (int(w) for w in args.workers.split(",")):
                    for kind in ("bare", "tracked"):
                        key = f"{mode}|{workers}|{kind}"
                        rate = measure(kind, mode, workers, store_url, args.items, args.prefetch)
                        runs.setdefault(key, []).append(rate)
                        print(key, f"{rate:,.0f} items/s", flush=True)
    _report(runs, args)
    return 0


def _report(runs: dict[str, list[float]], args: argparse.Namespace) -> None:
    results: dict[str, Any] = {}
    rows = []
    for key, samples in runs.items():
        mode, workers, kind = key.split("|")
        entry: dict[str, Any] = {"items_per_second": summary(samples)}
        ratio = ""
        if kind == "tracked":
            bare = runs[f"{mode}|{workers}|bare"]
            ratios = [t / b for t, b in zip(samples, bare, strict=True)]
            entry["ratio_to_bare"] = summary(ratios)
            ratio = f"{statistics.median(ratios):.2f}x"
        results[key] = entry
        rows.append([mode, workers, kind, f"{statistics.median(samples):,.0f}", ratio])
    markdown = (
        "# Tracked items/s through RabbitMQ (no-op stage)\n\n"
        f"{args.items:,} messages per run, prefetch {args.prefetch}, {WINDOW} publisher"
        f" confirms in flight, durable quorum queue, persistent messages, manual acks;"
        f" medians of {args.runs} runs; ratio = median of the per-run tracked/bare ratios"
        " (measured back to back).\n\n"
        + table(["mode", "consumers", "loop", "items/s", "tracked / bare"], rows)
    )
    write(
        "broker",
        {"items": args.items, "prefetch": args.prefetch, "runs": args.runs, "results": results},
        markdown,
        out=args.out,
    )


if __name__ == "__main__":
    raise SystemExit(main())
