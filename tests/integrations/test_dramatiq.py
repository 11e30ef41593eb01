"""The Dramatiq integration's own parts: what the middleware counts for each
way Dramatiq settles a message (in process, on Dramatiq's stub broker and a
SQLite store), the flushes the worker threads share, the acks held until
their flush (in process, and a worker process killed on RabbitMQ), the
ledger payload of a message and the queue depth on RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dramatiq
import pika  # type: ignore[import-untyped]
import pytest
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import Middleware, SkipMessage

import jobtrack
from jobtrack.errors import InvalidRequest
from jobtrack.integrations import HEADER, TaskCall, TaskCounter, TaskRef
from jobtrack.integrations import dramatiq as dramatiq_integration
from jobtrack.integrations.dramatiq import (
    HELD_PREFETCH,
    CountedAcks,
    DramatiqSender,
    DramatiqTracking,
    FlushGroup,
    HeldConsumer,
    JobtrackMiddleware,
    message_for,
    task_call,
)
from jobtrack.model import Job, JobStatus
from jobtrack.store.ledger import LedgerItem
from tests.apps.harness import ROOT
from tests.rabbitmq import require_server, scratch_vhost, vhost_url

QUEUE = "mail"


def make_app(tmp_path: Path) -> jobtrack.App:
    settings = jobtrack.Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'j.db'}")
    return jobtrack.App(settings)


class RetryRecording(TaskCounter):
    """A counter that also records the references it is told will be retried."""

    def __init__(self, app: jobtrack.App) -> None:
        super().__init__(app)
        self.retried: list[TaskRef] = []
        self._retried_lock = threading.Lock()

    def retrying(self, ref: TaskRef) -> None:
        with self._retried_lock:
            self.retried.append(ref)
        super().retrying(ref)


def test_each_way_dramatiq_settles_a_message_counts_as_it_should(tmp_path: Path) -> None:
    broker = StubBroker()
    app = make_app(tmp_path)
    counter = RetryRecording(app)
    runs: Counter[str] = Counter()

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def ok(n: int) -> None:
        runs[f"ok{n}"] += 1

    @dramatiq.actor(broker=broker, queue_name=QUEUE, min_backoff=1, max_backoff=5)
    def flaky(n: int) -> None:
        runs[f"flaky{n}"] += 1
        if runs[f"flaky{n}"] == 1:
            raise RuntimeError("first try")

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=1, min_backoff=1, max_backoff=5)
    def fail(n: int) -> None:
        runs[f"fail{n}"] += 1
        raise ValueError(f"task {n} failed")

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=5, throws=(KeyError,))
    def thrown(n: int) -> None:
        runs[f"thrown{n}"] += 1
        raise KeyError(f"no {n}")

    tracking = DramatiqTracking(app, broker)
    tracking.job_type("mails", ["send"], queues={"send": QUEUE})
    middleware = JobtrackMiddleware(counter)
    broker.add_middleware(middleware)
    with tracking.start_job("mails") as job:
        keys = [job.send("send", ok.message(n)) for n in range(3)]
        job.send("send", flaky.message(0), key="flaky0")
        for n in range(2):
            job.send("send", fail.message(n), key=f"fail{n}")
        job.send("send", thrown.message(0), key="thrown0")
    ok.send(9)  # not an item: runs, counted nowhere

    worker = dramatiq.Worker(broker, worker_threads=4)
    worker.start()
    try:
        broker.join(QUEUE, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    middleware.counter.close()

    assert keys[0] != keys[1]  # each a message's own id
    assert runs == Counter(
        {"ok0": 1, "ok1": 1, "ok2": 1, "ok9": 1, "flaky0": 2, "fail0": 2, "fail1": 2, "thrown0": 1}
    )

    async def read() -> tuple[Job, list[tuple[str, str, int]]]:
        async with app:
            found = await app.store.get_job(job.id)
            failures = await app.store.list_failures(job.id)
        return found, sorted((f.key, f.error, f.attempts) for f in failures)

    found, failures = asyncio.run(read())
    stage = found.stage("send")
    assert (stage.total_items, stage.completed_items, stage.failed_items) == (7, 4, 3)
    assert found.status is JobStatus.COMPLETED
    assert failures == [
        ("fail0", "ValueError: task 0 failed", 2),
        ("fail1", "ValueError: task 1 failed", 2),
        ("thrown0", "KeyError: 'no 0'", 1),
    ]
    assert sorted(counter.retried, key=lambda ref: ref.key) == [  # first attempts retried
        TaskRef(job.id, "send", key) for key in ("fail0", "fail1", "flaky0")
    ]


class Skipper(Middleware):
    """Skips the messages of the actor ``skipped`` without failing them."""

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if message.actor_name == "skipped":
            raise SkipMessage("not today")


def test_without_retries_an_error_fails_and_skips_and_unknown_actors_count_as_they_end(
    tmp_path: Path,
) -> None:
    broker = StubBroker(middleware=[])  # no Retries: an error is the message's end
    app = make_app(tmp_path)
    runs: Counter[str] = Counter()

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def fail(n: int) -> None:
        runs["fail"] += 1
        raise ValueError(f"task {n} failed")

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def skipped() -> None:
        runs["skipped"] += 1

    tracking = DramatiqTracking(app, broker)
    tracking.job_type("mails", ["send"])
    middleware = JobtrackMiddleware(app)
    broker.add_middleware(middleware)
    broker.add_middleware(Skipper())  # after the counting middleware: its run is forgotten
    unknown: dramatiq.Message[None] = dramatiq.Message(
        queue_name=QUEUE, actor_name="missing", args=(), kwargs={}, options={}
    )
    with tracking.start_job("mails") as job:
        job.send("send", fail.message(1), key="fail1")
        job.send("send", skipped.message(), key="skipped")
        job.send("send", unknown, key="missing")

    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        broker.join(QUEUE, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    middleware.counter.close()

    assert runs == Counter({"fail": 1})
    assert [m.actor_name for m in broker.dead_letters] == ["missing"]

    async def read() -> tuple[Job, list[tuple[str, str, int]]]:
        async with app:
            found = await app.store.get_job(job.id)
            failures = await app.store.list_failures(job.id)
        return found, sorted((f.key, f.error, f.attempts) for f in failures)

    found, failures = asyncio.run(read())
    stage = found.stage("send")
    assert (stage.total_items, stage.completed_items, stage.failed_items) == (3, 0, 2)
    assert found.status is JobStatus.IN_PROGRESS  # the skipped one is missing
    assert failures == [
        ("fail1", "ValueError: task 1 failed", 1),
        ("missing", "ActorNotFound: missing", 1),
    ]


class GatedCounter(TaskCounter):
    """A counter whose first flush waits for a gate; it counts its flushes."""

    def __init__(self, app: jobtrack.App) -> None:
        super().__init__(app)
        self.gate = threading.Event()
        self.calls = 0

    def flush(self, timeout: float | None = None, *, keep_writing: bool = False) -> bool:
        self.calls += 1
        if self.calls == 1:
            self.gate.wait(10)
        return True


def test_threads_that_end_during_a_flush_share_the_next_one(tmp_path: Path) -> None:
    counter = GatedCounter(make_app(tmp_path))
    group = FlushGroup(counter)
    results: list[bool] = []
    first = threading.Thread(target=lambda: results.append(group.wait(5)))
    first.start()
    while counter.calls < 1:
        threading.Event().wait(0.01)
    others = [threading.Thread(target=lambda: results.append(group.wait(5))) for _ in range(7)]
    for thread in others:
        thread.start()
    while group.waiting < 7:  # all of them wait for the flush that runs
        threading.Event().wait(0.01)
    counter.gate.set()
    for thread in [first, *others]:
        thread.join()
    assert results == [True] * 8
    assert (counter.calls, group.flushes) == (2, 2)  # one flush for the first, one for the 7


def test_a_message_round_trips_through_its_ledger_payload() -> None:
    broker = StubBroker()

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def send(user: int, *, subject: str) -> None: ...

    message = send.message_with_options(args=(7,), kwargs={"subject": "hi"}, max_retries=4)
    call = TaskCall.from_payload(task_call(message).payload())
    assert call == TaskCall(
        "send", (7,), {"subject": "hi"}, {"max_retries": 4, "queue_name": QUEUE}, message.message_id
    )
    again = message_for(call, TaskRef("job-1", "send", "k1"))
    assert (again.queue_name, again.actor_name, again.args, again.kwargs) == (
        QUEUE,
        "send",
        (7,),
        {"subject": "hi"},
    )
    assert again.message_id == message.message_id
    assert again.options == {
        "max_retries": 4,
        HEADER: {"job": "job-1", "stage": "send", "key": "k1"},
    }
    assert TaskRef.from_header(again.options[HEADER]) == TaskRef("job-1", "send", "k1")
    with pytest.raises(InvalidRequest, match="records no queue_name"):
        message_for(TaskCall("send", (1,)), TaskRef("job-1", "send", "k1"))
    with pytest.raises(InvalidRequest, match="must be JSON"):
        task_call(send.message_with_options(args=(object(),), kwargs={"subject": "x"}))


def test_the_backlog_is_the_queue_and_its_delay_queue_on_rabbitmq() -> None:
    require_server()
    with scratch_vhost("dramatiq-backlog") as vhost:
        broker = RabbitmqBroker(url=vhost_url(vhost))
        try:
            sender = DramatiqSender(broker, {"send": (QUEUE,), "other": ("never-declared",)})
            now = datetime.now(UTC)
            job = Job("job-1", "mails", JobStatus.IN_PROGRESS, now, now, stages={})
            items = [
                LedgerItem(f"k{n}", TaskCall("send", (n,), options={"queue_name": QUEUE}).payload())
                for n in range(3)
            ]
            asyncio.run(sender.send(job, "send", items))
            retry = message_for(
                TaskCall.from_payload(items[0].payload), TaskRef(job.id, "send", "k0")
            )
            broker.enqueue(retry, delay=60_000)  # a retry waiting in the delay queue
            assert asyncio.run(sender.backlog("send")) == 4
            assert asyncio.run(sender.backlog("other")) == 0
            assert asyncio.run(sender.backlog("unnamed")) is None
            assert (
                asyncio.run(DramatiqSender(StubBroker(), {"send": (QUEUE,)}).backlog("send"))
                is None
            )
        finally:
            broker.close()


# -- acks after the flush ---------------------------------------------------


class HeldFlush(TaskCounter):
    """A counter whose flushes wait for a gate, then write; it counts them."""

    def __init__(self, app: jobtrack.App) -> None:
        super().__init__(app)
        self.gate = threading.Event()
        self.flushes = 0

    def flush(self, timeout: float | None = None, *, keep_writing: bool = False) -> bool:
        self.flushes += 1
        self.gate.wait(30)
        return super().flush(timeout, keep_writing=keep_writing)


def _wait(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _done_items(app: jobtrack.App, job_id: str) -> tuple[int, int]:
    async def read() -> tuple[int, int]:
        async with app.with_settings(app.settings) as opened:
            stage = (await opened.store.get_job(job_id)).stage("send")
        return stage.completed_items, stage.failed_items

    return asyncio.run(read())


def _tracked_worker(
    tmp_path: Path, counter_type: type[TaskCounter] = HeldFlush, **options: Any
) -> tuple[StubBroker, jobtrack.App, Any, JobtrackMiddleware, list[int]]:
    broker = StubBroker(middleware=[])
    app = make_app(tmp_path)
    runs: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def ok(n: int) -> None:
        runs.append(n)

    tracking = DramatiqTracking(app, broker)
    tracking.job_type("mails", ["send"])
    middleware = JobtrackMiddleware(counter_type(app), **options)
    broker.add_middleware(middleware)
    return broker, app, ok, middleware, runs


def test_counted_messages_are_acked_once_their_flush_ends_and_threads_go_on(
    tmp_path: Path,
) -> None:
    broker, app, ok, middleware, runs = _tracked_worker(tmp_path)
    counter = middleware.counter
    assert isinstance(counter, HeldFlush)
    with DramatiqTracking(app, broker).start_job("mails") as job:
        for n in range(6):
            job.send("send", ok.message(n))
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        queue = broker.queues[QUEUE]
        # 2 threads ran all 6 messages while the first flush waits: none waited
        # on the store, and none is acked.
        _wait(
            lambda: len(runs) == 6 and middleware.acks.held == 6 and counter.flushes == 1,
            "all run, held",
        )
        assert queue.unfinished_tasks == 6
        assert _done_items(app, job.id) == (0, 0)
        counter.gate.set()
        broker.join(QUEUE, timeout=20_000)  # acked: each count was durable first
        assert _done_items(app, job.id) == (6, 0)
        assert middleware.acks.settled == 6
        assert counter.flushes <= 3  # one for the first, one for those held meanwhile
        # The queue's consumer has room for the held messages; the delay queue's not.
        held = worker.consumers[QUEUE].consumer
        assert isinstance(held, HeldConsumer)
        extra = max(worker.queue_prefetch, HELD_PREFETCH)
        assert getattr(held.consumer, "prefetch") == worker.queue_prefetch + extra  # noqa: B009
        delay = worker.consumers[f"{QUEUE}.DQ"]
        assert getattr(delay.consumer, "consumer").prefetch == delay.prefetch  # noqa: B009
    finally:
        counter.gate.set()
        worker.stop()
    assert "consume" not in vars(broker)  # the broker's own consumers again


def test_a_stopping_worker_settles_every_message_it_holds(tmp_path: Path) -> None:
    broker, app, ok, middleware, runs = _tracked_worker(tmp_path)
    counter = middleware.counter
    assert isinstance(counter, HeldFlush)
    with DramatiqTracking(app, broker).start_job("mails") as job:
        for n in range(5):
            job.send("send", ok.message(n))
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    _wait(lambda: len(runs) == 5, "all run")
    threading.Timer(0.5, counter.gate.set).start()  # the store answers late
    worker.stop()
    assert broker.queues[QUEUE].unfinished_tasks == 0  # every message acked
    assert (middleware.acks.held, middleware.acks.settled) == (0, 5)
    middleware.counter.close()
    assert _done_items(app, job.id) == (5, 0)


class Unflushable(TaskCounter):
    """A counter whose flushes never make anything durable (the store is down)."""

    def flush(self, timeout: float | None = None, *, keep_writing: bool = False) -> bool:
        return False


def test_messages_whose_flush_fails_are_acked_anyway_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker, app, ok, middleware, runs = _tracked_worker(tmp_path, Unflushable, flush_timeout=0.2)
    with DramatiqTracking(app, broker).start_job("mails") as job:
        for n in range(4):
            job.send("send", ok.message(n))
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        broker.join(QUEUE, timeout=20_000)
    finally:
        worker.stop()
    assert sorted(runs) == [0, 1, 2, 3]
    assert middleware.acks.not_durable == 4
    assert any(getattr(r, "action", None) == "count_not_durable" for r in caplog.records)
    middleware.counter.close()  # the counts kept are written when the store answers
    assert _done_items(app, job.id) == (4, 0)


class Recording(Consumer):
    """A broker consumer that hands out given messages and records what it settles."""

    def __init__(self, messages: list[MessageProxy]) -> None:
        self.messages = messages
        self.acked: list[str] = []
        self.nacked: list[str] = []

    def __next__(self) -> MessageProxy | None:
        return self.messages.pop(0) if self.messages else None

    def ack(self, message: MessageProxy) -> None:
        self.acked.append(message.message_id)

    def nack(self, message: MessageProxy) -> None:
        self.nacked.append(message.message_id)


def _proxy(n: int) -> MessageProxy:
    return MessageProxy(
        dramatiq.Message(queue_name=QUEUE, actor_name="ok", args=(n,), kwargs={}, options={})
    )


def test_held_messages_are_settled_on_their_own_consumer_and_never_once_it_is_closed(
    tmp_path: Path,
) -> None:
    counter = HeldFlush(make_app(tmp_path))
    acks = CountedAcks(counter)
    old = Recording([_proxy(1)])
    new = Recording([_proxy(2)])
    first = HeldConsumer(old, acks)
    lost = next(first)
    second = HeldConsumer(new, acks)  # the consumer thread's after a restart
    kept = next(second)
    assert lost is not None
    assert kept is not None
    assert acks.hold(lost, _nothing)
    second.ack(lost)  # the ack comes through the consumer open now
    assert acks.hold(kept, _nothing)
    second.nack(kept)
    plain = _proxy(4)
    assert not acks.hold(plain, _nothing)  # no consumer of ours delivered it
    second.ack(plain)  # not counted: acked at once
    assert new.acked == [plain.message_id]
    first.close()  # the connection of the old consumer is lost
    counter.gate.set()
    assert acks.drain(10)
    assert (old.acked, old.nacked) == ([], [])  # its tags mean nothing on another channel
    assert new.nacked == [kept.message_id]
    assert lost.message_id not in new.acked  # nor on the new one
    assert (acks.settled, acks.lost) == (1, 1)
    acks.stop()
    counter.close()


def _hand_over(acks: CountedAcks, consumer: HeldConsumer, count: int, pause: float) -> list[str]:
    """Hand ``count`` messages of ``consumer`` to ``acks``, ``pause`` seconds
    apart, as worker threads would; their ids."""
    ids = []
    for _ in range(count):
        message = next(consumer)
        assert message is not None
        assert acks.hold(message, _nothing)
        consumer.ack(message)
        ids.append(message.message_id)
        time.sleep(pause)
    return ids


def test_the_acks_thread_lingers_for_more_messages_before_one_flush(tmp_path: Path) -> None:
    counter = HeldFlush(make_app(tmp_path))
    counter.gate.set()
    acks = CountedAcks(counter, flush_linger=1.0)
    recording = Recording([_proxy(n) for n in range(8)])
    ids = _hand_over(acks, HeldConsumer(recording, acks), 8, 0.01)
    assert acks.drain(10)
    # Each message handed over after the first does not end the wait.
    assert (counter.flushes, recording.acked) == (1, ids)
    acks.stop()
    counter.close()


def test_a_full_batch_is_flushed_before_the_linger_is_up(tmp_path: Path) -> None:
    counter = HeldFlush(make_app(tmp_path))
    counter.gate.set()
    acks = CountedAcks(counter, held_prefetch=8, flush_linger=30.0)
    assert acks.flush_at == 6
    recording = Recording([_proxy(n) for n in range(7)])
    consumer = HeldConsumer(recording, acks)
    ids = _hand_over(acks, consumer, 6, 0.0)
    _wait(lambda: recording.acked == ids, "a full batch settled", within=5.0)
    assert counter.flushes == 1
    last = _hand_over(acks, consumer, 1, 0.0)
    time.sleep(0.2)
    assert (acks.held, recording.acked) == (1, ids)  # one message: it lingers
    assert acks.drain(1.0)  # it does not wait out the linger
    assert (counter.flushes, recording.acked) == (2, ids + last)
    acks.stop()
    counter.close()


def _held_then_killed(url: str, queue: str, store: str, total: str) -> None:
    """A worker whose flushes never end runs ``total`` messages of ``queue``,
    then its process is killed."""
    broker = RabbitmqBroker(url=url)
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue)
    def ok(n: int) -> None:
        ran.append(n)

    app = jobtrack.App(
        jobtrack.Settings(data_dir=Path(store).parent, store_url=f"sqlite:///{store}")
    )
    middleware = JobtrackMiddleware(HeldFlush(app))
    broker.add_middleware(middleware)
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    deadline = time.monotonic() + 30
    while (len(ran) < int(total) or middleware.acks.held + 2 < int(total)) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    print(f"ran {len(ran)}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_before_its_flush_leaves_its_messages_to_be_delivered_again(
    tmp_path: Path,
) -> None:
    require_server()
    total = 6
    with scratch_vhost("dramatiq-held") as vhost:
        url = vhost_url(vhost)
        broker = RabbitmqBroker(url=url)
        try:

            @dramatiq.actor(broker=broker, queue_name=QUEUE)
            def ok(n: int) -> None: ...

            for n in range(total):
                ref = TaskRef("job-1", "send", f"k{n}")
                broker.enqueue(ok.message_with_options(args=(n,), **{HEADER: ref.header()}))
            child = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from tests.integrations.test_dramatiq import _held_then_killed;"
                    " _held_then_killed(*sys.argv[1:])",
                    url,
                    QUEUE,
                    str(tmp_path / "j.db"),
                    str(total),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
            assert f"ran {total}" in child.stdout, child.stderr[-3000:]
            # Nothing was acked: RabbitMQ has every message ready again.
            _wait(lambda: _ready(broker, QUEUE) == total, "messages back in the queue")
        finally:
            broker.close()


def _ready(broker: RabbitmqBroker, queue: str) -> int:
    connection = pika.BlockingConnection(broker.parameters)
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.message_count)
    finally:
        connection.close()


class Flaky(Recording):
    """A broker consumer whose first ``failures`` acks lose their connection."""

    def __init__(self, messages: list[MessageProxy], failures: int) -> None:
        super().__init__(messages)
        self.failures = failures

    def ack(self, message: MessageProxy) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionClosed(RuntimeError("connection reset"))  # type: ignore[no-untyped-call]
        super().ack(message)


def test_an_ack_whose_connection_fails_is_tried_again_until_its_consumer_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dramatiq_integration, "SETTLE_RETRY", 0.01)
    counter = HeldFlush(make_app(tmp_path))
    counter.gate.set()
    acks = CountedAcks(counter)
    recovering = Flaky([_proxy(1)], failures=3)
    consumer = HeldConsumer(recovering, acks)
    message = next(consumer)
    assert message is not None
    assert acks.hold(message, _nothing)
    consumer.ack(message)
    assert acks.drain(10)
    assert recovering.acked == [message.message_id]  # the fourth try went through
    broken = Flaky([_proxy(2)], failures=1_000_000)
    consumer = HeldConsumer(broken, acks)
    message = next(consumer)
    assert message is not None
    assert acks.hold(message, _nothing)
    consumer.ack(message)
    _wait(lambda: broken.failures < 1_000_000 - 3, "tried again")
    consumer.close()  # Dramatiq restarts the consumer: the broker delivers it again
    assert acks.drain(10)
    assert broken.acked == []
    assert (acks.settled, acks.lost) == (1, 1)
    acks.stop()
    counter.close()


def _nothing() -> None:
    """A report of a message's end that reports nothing."""
