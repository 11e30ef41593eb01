"""The Dramatiq integration's own parts: what the middleware counts for each
way Dramatiq settles a message (in process, on Dramatiq's stub broker and a
SQLite store), the flushes the worker threads share, the ledger payload of a
message and the queue depth on RabbitMQ."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, SkipMessage

import jobtrack
from jobtrack.errors import InvalidRequest
from jobtrack.integrations import HEADER, TaskCall, TaskCounter, TaskRef
from jobtrack.integrations.dramatiq import (
    DramatiqSender,
    DramatiqTracking,
    FlushGroup,
    JobtrackMiddleware,
    message_for,
    task_call,
)
from jobtrack.model import Job, JobStatus
from jobtrack.store.ledger import LedgerItem
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

    def flush(self, timeout: float | None = None) -> bool:
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
