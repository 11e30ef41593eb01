"""Items per second of a user's no-op job type through RabbitMQ, against a
bare aio-pika loop with the same durability.

Usage::

    python -m bench.broker [--runs 5] [--items 20000] [--prefetch 500]
                           [--workers 1,4] [--modes end-to-end,drain] [--out DIR]

Both loops move ``--items`` messages of the same bytes through one durable
quorum queue, persistent messages, 100 publisher confirms in flight, the
same prefetch and a manual ack per message, with 1 or 4 consumer processes:

- ``bare``: one process publishes with aio-pika; each consumer acks a
  message as soon as it arrives and counts it.
- ``tracked``: jobtrack's public API alone. The job type ``bench-noop``
  (one stage, ``noop``, whose ``async`` handler returns at once) is
  declared with ``App().job_type``; one process produces a job of it with
  ``App.start_job`` and ``JobProducer.add`` (each batch of 1,000 written to
  the item ledger, then published) and seals it on leaving the block; each
  consumer process runs a real :class:`jobtrack.Worker` on the app
  (PostgreSQL store, RabbitMQ broker, the default settings: coalesced
  progress flushed every 100 ms), which decodes each item, runs the
  handler, counts the item with its key and acks it once the count is
  durable. What is measured is the tracking system's own cost.

``end-to-end`` times the first publish to the last item done, the producer
and the consumers running at once; ``drain`` fills the queue first and
times the consumers alone, from the moment every consumer is consuming
(the items done before then are left out of the rate). An item is done
when acked (``bare``) or when its count is durable in the store
(``tracked``: polled every 5 ms, as the bare acks are; the ack follows the
durable count). Each run uses a queue of its own, deleted afterwards.

Every run checks its exact counts: ``bare``, the consumers acked exactly
``--items`` messages and the queue is empty; ``tracked``, the job completed
with its stage's total sealed at ``--items``, exactly ``--items`` items
completed and none failed, ``--items`` items in its ledger, and the queue
and its dead-letter queue empty. Medians of the runs are reported, with
the ratio tracked/bare (the median of each run's back-to-back ratio) and
the load average of the machine (shared with other work).

``bench.broker:app`` is the job type's app, for ``jobtrack worker --app
bench.broker:app`` (its queue is ``jobtrack.bench-noop.noop``; the
benchmark itself gives each run's app a queue of its own).

PostgreSQL runs in a database of its own, created and dropped here, on
``$JOBTRACK_BENCH_POSTGRES_URL`` (default: the local server); RabbitMQ is
``$JOBTRACK_BENCH_AMQP_URL`` (default: guest on the local server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import aio_pika

import jobtrack
from bench.progress import backend
from bench.report import RESULTS, summary, table, write
from jobtrack.broker.base import dead_letter_queue
from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.model import JobStatus
from jobtrack.store import JobStore, open_store

AMQP_URL = os.environ.get("JOBTRACK_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TYPE = "bench-noop"
STAGE = "noop"
WINDOW = 100  # publisher confirms in flight (the broker's default confirm window)
ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}
POLL = 0.005  # seconds between two looks at the count
CONNECT_WITHIN = 60.0  # seconds a process has to connect


async def noop(item: jobtrack.Item) -> None:
    """The no-op stage's handler: returns at once (the item is done)."""


def make_app(settings: jobtrack.Settings | None = None, queue: str | None = None) -> jobtrack.App:
    """An app with the ``bench-noop`` job type: one stage, ``noop``, handled
    by :func:`noop` on the event loop, its items on ``queue`` (default
    ``jobtrack.bench-noop.noop``); ``settings`` None: from the environment."""
    made = jobtrack.App(settings)
    job_type = made.job_type(TYPE, [STAGE])
    job_type.handler(STAGE, queue=queue)(noop)
    return made


app = make_app()
"""The benchmark's app, for ``jobtrack worker --app bench.broker:app``."""


@dataclass(frozen=True, slots=True)
class Setup:
    """One measurement: which loop, its queue, the store and sizes."""

    kind: str  # bare | tracked
    queue: str
    store_url: str
    data_dir: str
    items: int
    prefetch: int

    def app(self) -> jobtrack.App:
        """The tracked loop's app: this run's queue, store and broker."""
        settings = jobtrack.Settings(
            data_dir=Path(self.data_dir), store_url=self.store_url, broker_url=AMQP_URL
        )
        return make_app(settings, self.queue)


def _keys(items: int) -> list[str]:
    return [f"item-{n:06d}" for n in range(items)]


def _bare_bodies(setup: Setup) -> list[bytes]:
    """The tracked loop's messages, byte for byte the same size."""
    job_id = uuid.uuid4().hex  # as long as a job's id
    return [
        encode_item(ItemMessage(job_id=job_id, job_type=TYPE, stage=STAGE, key=key, payload=None))
        for key in _keys(setup.items)
    ]


async def _wait(event: Any) -> None:
    while not event.is_set():  # noqa: ASYNC110 (a multiprocessing event, not an asyncio one)
        await asyncio.sleep(POLL)


async def _produce_bare(setup: Setup, go: Any, job: Connection) -> None:
    bodies = _bare_bodies(setup)
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

    job.send("")
    await _wait(go)
    await asyncio.gather(*(one(body) for body in bodies))
    await connection.close()


async def _produce_tracked(setup: Setup, go: Any, job: Connection) -> None:
    keys = _keys(setup.items)
    async with setup.app() as tracked, tracked.start_job(TYPE) as producer:
        job.send(producer.job.id)
        await _wait(go)
        await producer.add(STAGE, keys)


def producer(setup: Setup, go: Any, job: Connection) -> None:
    """Send the job's id (``""`` for the bare loop) on ``job``, then publish
    every item once ``go`` is set (and, tracked, seal the job)."""
    run = _produce_bare if setup.kind == "bare" else _produce_tracked
    asyncio.run(run(setup, go, job))


async def _consume_bare(setup: Setup, acked: Synchronized[int], ready: Any, stop: Any) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=setup.prefetch)
    queue = await channel.declare_queue(setup.queue, durable=True, arguments=ARGUMENTS)

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        acked.value += 1

    await queue.consume(handle)
    ready.set()
    await _wait(stop)
    await connection.close()


async def _consume_tracked(setup: Setup, acked: Synchronized[int], ready: Any, stop: Any) -> None:
    worker = jobtrack.Worker(app=setup.app(), prefetch=setup.prefetch)
    stopping, consuming = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(worker.run(stopping, ready=consuming))
    waiting = asyncio.create_task(consuming.wait())
    await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if running.done():
        running.result()  # the worker failed to start: say why
        return
    ready.set()
    await _wait(stop)
    stopping.set()
    await running


def consumer(setup: Setup, acked: Synchronized[int], ready: Any, stop: Any) -> None:
    """Consume (setting ``ready`` once consuming) until ``stop`` is set; the
    bare loop counts its acks into ``acked``."""
    run = _consume_bare if setup.kind == "bare" else _consume_tracked
    asyncio.run(run(setup, acked, ready, stop))


async def _declare(queue: str) -> None:
    # The tracked side's own declaration (dead-letter queue, delivery limit)
    # is the broker's, on the worker's first consume and the first publish.
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.declare_queue(queue, durable=True, arguments=ARGUMENTS)
    await connection.close()


async def _left_and_delete(queue: str) -> int:
    """Messages left in ``queue`` and its dead-letter queue; deletes both."""
    connection = await aio_pika.connect(AMQP_URL)
    left = 0
    for name in (queue, dead_letter_queue(queue)):
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:  # the bare loop has no dead-letter queue
            continue
        left += declared.declaration_result.message_count or 0
        await channel.queue_delete(name)
    await connection.close()
    return left


@dataclass(frozen=True, slots=True)
class Run:
    """One measurement: items a second, and the items done before the clock
    started (drain: while the consumers were starting)."""

    rate: float
    before: int


async def _done(store: JobStore, job_id: str) -> int:
    stage = (await store.get_job(job_id)).stage(STAGE)
    return stage.completed_items + stage.failed_items


async def _check_tracked(store: JobStore, job_id: str, items: int) -> None:
    job = await store.get_job(job_id)
    stage = job.stage(STAGE)
    ledger = (await store.tally_ledger(job_id))[STAGE].items
    found = (job.status, stage.total_items, stage.total_final, stage.completed_items)
    wanted = (JobStatus.COMPLETED, items, True, items)
    if found != wanted or stage.failed_items != 0 or ledger != items:
        raise AssertionError(
            f"job {job_id}: (status, total, sealed, completed) {found}, wanted {wanted};"
            f" {stage.failed_items} failed, {ledger} in the ledger"
        )


def _join(processes: list[Any], what: str) -> None:
    for process in processes:
        process.join(CONNECT_WITHIN)
        if process.exitcode != 0:
            raise RuntimeError(f"a {what} process ended with {process.exitcode}")


async def _started(processes: list[Any], readies: list[Any]) -> None:
    """Start the consumer processes; return once every one is consuming."""
    for process in processes:
        process.start()
    for ready, process in zip(readies, processes, strict=True):
        while not ready.is_set():
            if not process.is_alive():
                raise RuntimeError("a consumer died while starting")
            await asyncio.sleep(POLL)


async def _check(setup: Setup, store: JobStore, job_id: str, acked: int) -> None:
    """The run's exact counts (after its consumers stopped); deletes its queues."""
    left = await _left_and_delete(setup.queue)
    if setup.kind == "bare":
        if acked != setup.items or left != 0:
            raise AssertionError(f"acked {acked} of {setup.items}, {left} left in the queue")
        return
    await _check_tracked(store, job_id, setup.items)
    if left != 0:
        raise AssertionError(f"{left} messages left in the queue or its dead-letter queue")


async def _measure(setup: Setup, mode: str, workers: int, store: JobStore) -> Run:
    context = multiprocessing.get_context("spawn")
    if setup.kind == "bare":
        await _declare(setup.queue)
    go, stop = context.Event(), context.Event()
    receiving, sending = context.Pipe(duplex=False)
    counters = [context.Value("q", 0, lock=False) for _ in range(workers)]
    readies = [context.Event() for _ in range(workers)]
    publisher = context.Process(target=producer, args=(setup, go, sending))
    consumers = [
        context.Process(target=consumer, args=(setup, counters[w], readies[w], stop))
        for w in range(workers)
    ]
    parts = _Processes(publisher, consumers, counters, readies, go, stop, receiving)
    try:
        return await _timed(setup, mode, store, parts)
    except BaseException:  # a process died: end the others, drop the queue
        stop.set()
        for process in [publisher, *consumers]:
            if process.is_alive():
                process.terminate()
                process.join(10)
        with contextlib.suppress(Exception):
            await _left_and_delete(setup.queue)
        raise


@dataclass(frozen=True, slots=True)
class _Processes:
    """One measurement's processes and what they share."""

    publisher: Any
    consumers: list[Any]
    counters: list[Synchronized[int]]
    readies: list[Any]
    go: Any
    stop: Any
    receiving: Connection


async def _timed(setup: Setup, mode: str, store: JobStore, parts: _Processes) -> Run:
    """Start the processes, time the items, check the counts."""
    publisher, consumers, counters, go = parts.publisher, parts.consumers, parts.counters, parts.go
    publisher.start()
    if not await asyncio.to_thread(parts.receiving.poll, CONNECT_WITHIN):
        raise RuntimeError("the producer did not start")
    job_id: str = parts.receiving.recv()
    if mode == "drain":  # fill the queue first
        go.set()
        await asyncio.to_thread(_join, [publisher], "producer")
    await _started(consumers, parts.readies)

    async def done() -> int:
        if setup.kind == "bare":
            return sum(counter.value for counter in counters)
        return await _done(store, job_id)

    before = await done()
    started = time.perf_counter()
    go.set()
    while await done() < setup.items:
        if not all(process.is_alive() for process in consumers):
            raise RuntimeError("a consumer died")
        if publisher.exitcode not in (None, 0):
            raise RuntimeError("the producer died")
        await asyncio.sleep(POLL)
    seconds = time.perf_counter() - started
    parts.stop.set()
    await asyncio.to_thread(_join, [*consumers, publisher], "consumer or producer")
    await _check(setup, store, job_id, sum(counter.value for counter in counters))
    return Run((setup.items - before) / seconds, before)


def measure(  # noqa: PLR0917 - one configuration of the matrix
    kind: str, mode: str, workers: int, store_url: str, items: int, prefetch: int
) -> Run:
    """One configuration's items a second, its exact counts checked.

    :raises AssertionError: a count that is not exact.
    :raises RuntimeError: a process that died or did not start.
    """

    async def run() -> Run:
        store = open_store(store_url)
        try:
            with tempfile.TemporaryDirectory() as data_dir:
                queue = f"bench.{uuid.uuid4().hex[:8]}"
                setup = Setup(kind, queue, store_url, data_dir, items, prefetch)
                return await _measure(setup, mode, workers, store)
        finally:
            await store.aclose()

    return asyncio.run(run())


def _measured(kind: str, mode: str, workers: int, store_url: str, args: argparse.Namespace) -> Run:
    """:func:`measure`, once again when a process died (RabbitMQ restarted
    under it, say): that attempt's figure would not be the loop's."""
    try:
        return measure(kind, mode, workers, store_url, args.items, args.prefetch)
    except RuntimeError as exc:
        print(f"{mode}|{workers}|{kind} measured again: {exc}", flush=True)
        return measure(kind, mode, workers, store_url, args.items, args.prefetch)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write broker.{json,md} under ``--out``
    (default bench/results/broker/)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--prefetch", type=int, default=500)
    parser.add_argument("--workers", default="1,4")
    parser.add_argument("--modes", default="end-to-end,drain")
    parser.add_argument("--out", type=Path, default=RESULTS / "broker")
    args = parser.parse_args(argv)
    runs: dict[str, list[Run]] = {}
    load = [os.getloadavg()]
    with backend("postgres") as store_url:
        for _ in range(args.runs):
            for mode in args.modes.split(","):
                for workers in (int(w) for w in args.workers.split(",")):
                    for kind in ("bare", "tracked"):
                        key = f"{mode}|{workers}|{kind}"
                        run = _measured(kind, mode, workers, store_url, args)
                        runs.setdefault(key, []).append(run)
                        print(key, f"{run.rate:,.0f} items/s", flush=True)
    load.append(os.getloadavg())
    _report(runs, load, args)
    return 0


def _report(
    runs: dict[str, list[Run]], load: list[tuple[float, float, float]], args: argparse.Namespace
) -> None:
    results: dict[str, Any] = {}
    rows = []
    for key, measured in runs.items():
        mode, workers, kind = key.split("|")
        samples = [run.rate for run in measured]
        entry: dict[str, Any] = {
            "items_per_second": summary(samples),
            "samples": samples,
            "done_before_the_clock": [run.before for run in measured],
            "counts_checked": args.items,
        }
        ratio = ""
        if kind == "tracked":
            bare = [run.rate for run in runs[f"{mode}|{workers}|bare"]]
            ratios = [t / b for t, b in zip(samples, bare, strict=True)]
            entry["ratio_to_bare"] = summary(ratios)
            ratio = f"{statistics.median(ratios):.2f}x"
        results[key] = entry
        rows.append([mode, workers, kind, f"{statistics.median(samples):,.0f}", ratio])
    loads = " and ".join("/".join(f"{value:.2f}" for value in each) for each in load)
    markdown = (
        "# A user's no-op job type through RabbitMQ, against bare aio-pika\n\n"
        f"{args.items:,} items per run: `App.start_job` + `JobProducer.add` to the real"
        " `Worker` (PostgreSQL store, ack once the count is durable), against an aio-pika"
        f" publish/consume loop; prefetch {args.prefetch}, {WINDOW} publisher confirms in"
        " flight, durable quorum queue, persistent messages, manual acks on both."
        f" Medians of {args.runs} runs; ratio = median of the per-run tracked/bare ratios"
        " (measured back to back). Every run's exact counts checked"
        f" ({args.items:,} acked, or counted, sealed, in the ledger and none failed; queues"
        f" empty). Load average (1/5/15 min) before and after: {loads}.\n\n"
        + table(["mode", "consumers", "loop", "items/s", "tracked / bare"], rows)
    )
    write(
        "broker",
        {
            "items": args.items,
            "prefetch": args.prefetch,
            "confirm_window": WINDOW,
            "runs": args.runs,
            "load_average": load,
            "results": results,
        },
        markdown,
        out=args.out,
    )


if __name__ == "__main__":
    raise SystemExit(main())
