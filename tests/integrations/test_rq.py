"""RQ's integration in one process: what the producer records and
enqueues, the monitor's re-send, the queue's backlog, and
:class:`~jobtrack.integrations.rq.JobtrackSimpleWorker` counting each
job's end (a failure after its retries), on a store in SQLite and the
local Redis."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, Retry, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job as RQJob

import jobtrack
from jobtrack.errors import InvalidRequest
from jobtrack.integrations import HEADER, TaskCall, TaskCounter, TaskRef
from jobtrack.integrations import rq as rq_integration
from jobtrack.integrations.rq import (
    RETRIES,
    JobtrackSimpleWorker,
    RQJobSender,
    RQTracking,
    count_end,
    function_path,
)
from jobtrack.model import Job

REDIS_URL = "redis://127.0.0.1:6379/0"


def succeed(n: int) -> int:
    """A task that returns ``n``."""
    return n


def boom(n: int) -> None:
    """A task that fails every time.

    :raises ValueError: always.
    """
    raise ValueError(f"boom {n}")


@pytest.fixture
def queue() -> Iterator[Queue]:
    redis = Redis.from_url(REDIS_URL)
    try:
        redis.ping()
    except RedisConnectionError:
        pytest.skip("no Redis at " + REDIS_URL)
    made = Queue(f"jobtrack-test-rq-{uuid.uuid4().hex[:10]}", connection=redis)
    try:
        yield made
    finally:
        registries = (
            made.finished_job_registry,
            made.failed_job_registry,
            made.scheduled_job_registry,
        )
        ids = [job_id for registry in registries for job_id in registry.get_job_ids()]
        made.delete(delete_jobs=True)
        doomed = [f"rq:job:{i}" for i in ids] + [f"rq:results:{i}" for i in ids]
        doomed += [k.decode() for k in redis.scan_iter(match=f"*{made.name}*")]
        if doomed:
            redis.delete(*doomed)
        redis.close()


def tracking_of(tmp_path: Path, queue: Queue) -> RQTracking:
    settings = jobtrack.Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'j.db'}")
    tracking = RQTracking(jobtrack.App(settings), queue)
    tracking.job_type("emails", ["send"])
    return tracking


def stored_job(tracking: RQTracking, job_id: str) -> Job:
    async def read() -> Job:
        async with tracking.app.with_settings(tracking.app.settings) as app:
            return await app.store.get_job(job_id)

    job: Job = asyncio.run(read())
    return job


def test_a_function_is_sent_by_its_import_path() -> None:
    assert function_path(succeed) == "tests.integrations.test_rq.succeed"
    assert function_path("mail.send") == "mail.send"
    with pytest.raises(InvalidRequest, match="cannot be imported by name"):
        function_path(lambda: None)


def test_the_ledger_records_the_call_and_the_rq_job_carries_its_reference(
    tmp_path: Path, queue: Queue
) -> None:
    tracking = tracking_of(tmp_path, queue)
    with tracking.start_job("emails") as job:
        given = job.send("send", succeed, 1, key="u1", retry=Retry(max=2, interval=[0, 5]))
        made = job.send("send", "tests.integrations.test_rq.succeed", 2, result_ttl=60)
    assert given == "u1"
    assert uuid.UUID(made).version == 4  # no key: the RQ id is the key

    async def ledger() -> list[TaskCall]:
        async with tracking.app.with_settings(tracking.app.settings) as app:
            items = await app.store.ledger_items(job.job.id, "send", sorted([given, made]))
        by_key = {item.key: TaskCall.from_payload(item.payload) for item in items}
        return [by_key[given], by_key[made]]

    first, second = asyncio.run(ledger())
    assert (first.task, first.args, first.kwargs) == (
        "tests.integrations.test_rq.succeed",
        (1,),
        {},
    )
    assert first.options == {"retry": {"max": 2, "interval": [0, 5]}}
    assert uuid.UUID(first.task_id).version == 4  # a key given: the RQ id is a new UUID
    assert (second.args, second.options, second.task_id) == ((2,), {"result_ttl": 60}, "")
    assert queue.job_ids == [first.task_id, made]
    rq_job = queue.fetch_job(first.task_id)
    assert rq_job is not None
    assert rq_job.meta == {
        HEADER: {"job": job.job.id, "stage": "send", "key": "u1"},
        RETRIES: 2,
    }
    assert (rq_job.retries_left, rq_job.retry_intervals) == (2, [0, 5])
    assert asyncio.run(tracking.sender.backlog("send")) == 2
    started = queue.started_job_registry.key
    queue.connection.zadd(started, {"dead:1": time.time() - 1, "alive:1": time.time() + 60})
    queue.connection.zadd(queue.scheduled_job_registry.key, {"later": time.time() + 60})
    assert asyncio.run(tracking.sender.backlog("send")) == 4  # not the dead worker's job
    assert stored_job(tracking, job.job.id).stage("send").total_items == 2


def test_the_simple_worker_counts_each_end_once_and_a_failure_after_its_retries(
    tmp_path: Path, queue: Queue
) -> None:
    tracking = tracking_of(tmp_path, queue)
    with tracking.start_job("emails") as job:
        for n in range(3):
            job.send("send", succeed, n, key=f"ok{n}")
        job.send("send", boom, 7, key="bad", retry=Retry(max=1))
        job.send("send", succeed, 9, key="gone", result_ttl=0)
    job_id = job.job.id

    class Worker(JobtrackSimpleWorker):
        jobtrack_app = tracking.app

    assert Worker([queue], connection=queue.connection).work(burst=True)
    assert asyncio.run(tracking.sender.backlog("send")) == 0
    ended = stored_job(tracking, job_id)
    stage = ended.stage("send")
    assert (stage.total_items, stage.completed_items, stage.failed_items) == (5, 4, 1)

    async def failures() -> list[tuple[str, int, bool]]:
        async with tracking.app.with_settings(tracking.app.settings) as app:
            listed = await app.store.list_failures(job_id)
        return [(f.key, f.attempts, "ValueError: boom 7" in f.error) for f in listed]

    assert asyncio.run(failures()) == [("bad", 2, True)]


def test_a_re_sent_item_is_the_same_rq_job_enqueued_again(tmp_path: Path, queue: Queue) -> None:
    tracking = tracking_of(tmp_path, queue)
    with tracking.start_job("emails") as job:
        job.send("send", succeed, 1, key="u1")
    rq_id = queue.job_ids[0]

    class Worker(JobtrackSimpleWorker):
        jobtrack_app = tracking.app

    Worker([queue], connection=queue.connection).work(burst=True)
    assert queue.job_ids == []
    hash_key = f"rq:job:{rq_id}"
    assert 0 < queue.connection.ttl(hash_key) <= 500  # RQ's default result TTL

    async def resend() -> None:
        async with tracking.app.with_settings(tracking.app.settings) as app:
            items = await app.store.ledger_items(job.job.id, "send", ["u1"])
            await tracking.sender.send(job.job, "send", items)

    asyncio.run(resend())
    assert queue.job_ids == [rq_id]
    again = queue.fetch_job(rq_id)
    assert again is not None
    assert (again.get_status(), again.args) == ("queued", (1,))
    assert queue.connection.ttl(hash_key) == -1  # not to expire while it waits


class Recorded(TaskCounter):
    """A counter that records what it is told instead of counting it."""

    def __init__(self, app: jobtrack.App) -> None:
        super().__init__(app)
        self.calls: list[tuple[str, TaskRef, str]] = []

    def done(self, ref: TaskRef) -> None:
        """Record ``ref`` done."""
        self.calls.append(("done", ref, ""))

    def failed(self, ref: TaskRef, error: str, *, attempts: int = 1) -> None:
        """Record ``ref`` failed with ``error``."""
        self.calls.append(("failed", ref, f"{error} ({attempts})"))

    def retrying(self, ref: TaskRef) -> None:
        """Record ``ref`` retrying."""
        self.calls.append(("retrying", ref, ""))


def test_a_failure_ttl_that_deletes_the_failed_job_at_once_is_refused(
    tmp_path: Path, queue: Queue
) -> None:
    tracking = tracking_of(tmp_path, queue)
    with tracking.start_job("emails") as job:
        for ttl in (0, -2):
            refused = f"failure_ttl must be positive or -1 .*not {ttl}"
            with pytest.raises(InvalidRequest, match=refused):
                job.send("send", boom, 1, key=f"k{ttl}", failure_ttl=ttl)
        job.send("send", boom, 1, key="kept", failure_ttl=-1)
    assert stored_job(tracking, job.job.id).stage("send").total_items == 1


def test_a_failed_job_whose_record_is_gone_counts_failed(tmp_path: Path, queue: Queue) -> None:
    tracking = tracking_of(tmp_path, queue)
    ref = TaskRef("j1", "send", "k1")
    failed = queue.enqueue(
        boom, 1, failure_ttl=0, meta={HEADER: ref.header(), RETRIES: 2}, job_id=f"{queue.name}-f"
    )
    finished = queue.enqueue(
        succeed, 2, result_ttl=0, meta={HEADER: ref.header()}, job_id=f"{queue.name}-s"
    )
    assert SimpleWorker([queue], connection=queue.connection).work(burst=True)
    counter = Recorded(tracking.app)
    assert queue.connection.exists(failed.key, finished.key) == 0  # both deleted at their end
    assert (count_end(counter, failed), count_end(counter, finished)) == (True, True)
    assert counter.calls == [
        ("failed", ref, "RQ job failed (its record deleted at once) (3)"),
        ("done", ref, ""),
    ]


def test_a_job_scheduled_for_a_retry_touches_its_job(tmp_path: Path, queue: Queue) -> None:
    tracking = tracking_of(tmp_path, queue)
    with tracking.start_job("emails") as job:
        job.send("send", boom, 1, key="later", retry=Retry(max=1, interval=[600]))

    class Worker(JobtrackSimpleWorker):
        jobtrack_app = tracking.app

    assert Worker([queue], connection=queue.connection).work(burst=True)  # flushed at its end
    assert len(queue.scheduled_job_registry) == 1
    stage = stored_job(tracking, job.job.id).stage("send")
    assert (stage.message, stage.completed_items, stage.failed_items) == (
        "retrying: later and maybe more",
        0,
        0,
    )


def test_a_job_enqueued_again_for_a_retry_is_said_retrying(tmp_path: Path, queue: Queue) -> None:
    tracking = tracking_of(tmp_path, queue)
    ref = TaskRef("j1", "send", "k1")
    rq_job = queue.enqueue(boom, 1, meta={HEADER: ref.header()}, retry=Retry(max=1))
    worker = SimpleWorker([queue], connection=queue.connection)
    worker.execute_job(rq_job, queue)  # fails once: enqueued again
    counter = Recorded(tracking.app)
    assert count_end(counter, RQJob.fetch(rq_job.id, connection=queue.connection)) is False
    assert counter.calls == [("retrying", ref, "")]


def test_nothing_from_counting_stops_the_worker(
    tmp_path: Path, queue: Queue, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tracking = tracking_of(tmp_path, queue)
    with tracking.start_job("emails") as job:
        for n in range(2):
            job.send("send", succeed, n, key=f"ok{n}")

    def broken(counter: TaskCounter, job: RQJob) -> bool:
        raise RuntimeError("counting broke")

    monkeypatch.setattr(rq_integration, "count_end", broken)

    class Worker(JobtrackSimpleWorker):
        jobtrack_app = tracking.app

    with caplog.at_level(logging.ERROR, logger=rq_integration.__name__):
        assert Worker([queue], connection=queue.connection).work(burst=True)
    assert queue.job_ids == []
    assert [
        (r.getMessage().split(" ")[-2:], r.exc_info is not None and str(r.exc_info[1]))
        for r in caplog.records
        if getattr(r, "action", None) == "task_end_not_counted"
    ] == [(["not", "counted"], "counting broke")] * 2


def _enqueued(queue: Queue, count: int) -> list[tuple[RQJob, TaskRef]]:
    made = []
    for n in range(count):
        ref = TaskRef("j1", "send", f"k{n}")
        made.append((queue.enqueue(succeed, n, meta={HEADER: ref.header()}), ref))
    return made


def test_a_busy_worker_hands_the_ends_it_holds_over_together(
    tmp_path: Path, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rq_integration, "HOLD_MAX", 2)
    monkeypatch.setattr(rq_integration, "HOLD_FOR", 3600.0)
    tracking = tracking_of(tmp_path, queue)
    counter = Recorded(tracking.app)
    worker = JobtrackSimpleWorker([queue], connection=queue.connection)
    worker._jobtrack_counter = counter
    made = _enqueued(queue, 3)
    seen = []
    for rq_job, _ in made:
        taken = worker.dequeue_job_and_maintain_ttl(1)
        assert taken is not None
        assert taken[0].id == rq_job.id
        worker.execute_job(taken[0], taken[1])
        seen.append(len(counter.calls))
    assert seen == [0, 2, 2]  # held, then the two handed over, then one held
    assert worker.dequeue_job_and_maintain_ttl(None) is None  # empty: handed over
    assert counter.calls == [("done", ref, "") for _, ref in made]


def _three_items_and_a_worker(
    tracking: RQTracking, queue: Queue
) -> tuple[RQJobSender, JobtrackSimpleWorker]:
    """A job of 3 items sent to ``queue``, and a worker counting into
    ``tracking``'s app."""
    with tracking.start_job("emails") as job:
        for n in range(3):
            job.send("send", succeed, n, key=f"ok{n}")

    class Worker(JobtrackSimpleWorker):
        jobtrack_app = tracking.app

    return job, Worker([queue], connection=queue.connection)


def test_a_busy_workers_hand_over_is_written_before_its_next_job(
    tmp_path: Path, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counts would wait a minute in the counter: the busy hand-over (2 ends)
    # is written before the worker takes its next job, with no horse alive;
    # the one handed over when the queue is empty is left to the counter.
    monkeypatch.setattr(rq_integration, "HOLD_MAX", 2)
    settings = jobtrack.Settings(
        data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'j.db'}", flush_interval=60.0
    )
    tracking = RQTracking(jobtrack.App(settings), queue)
    tracking.job_type("emails", ["send"])
    job, worker = _three_items_and_a_worker(tracking, queue)
    assert worker._held.hold_for == 150.0  # 2.5 flush intervals, longer than HOLD_FOR
    done = []
    for _ in range(3):
        taken = worker.dequeue_job_and_maintain_ttl(1)
        assert taken is not None
        worker.execute_job(taken[0], taken[1])
        done.append(stored_job(tracking, job.job.id).stage("send").completed_items)
    assert done == [0, 2, 2]
    assert worker.dequeue_job_and_maintain_ttl(None) is None  # empty: handed over
    assert stored_job(tracking, job.job.id).stage("send").completed_items == 2
    worker._close_counter()
    assert stored_job(tracking, job.job.id).stage("send").completed_items == 3


def test_a_hand_over_whose_write_runs_out_does_not_wait_again_for_a_while(
    tmp_path: Path, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rq_integration, "HOLD_MAX", 1)
    waits: list[float | None] = []

    class Stalled(Recorded):
        def flush(self, timeout: float | None = None, *, keep_writing: bool = False) -> bool:
            assert keep_writing  # a slow write is not cancelled
            waits.append(timeout)
            return False  # the store is down, say

    tracking = tracking_of(tmp_path, queue)
    worker = JobtrackSimpleWorker([queue], connection=queue.connection)
    worker._jobtrack_counter = Stalled(tracking.app)
    for _ in _enqueued(queue, 3):
        taken = worker.dequeue_job_and_maintain_ttl(1)
        assert taken is not None
        worker.execute_job(taken[0], taken[1])
    assert waits == [rq_integration.WRITE_WAIT]  # then 5 s without waiting
    worker._jobtrack_wait_after = 0.0  # those 5 s have passed
    _enqueued(queue, 1)
    taken = worker.dequeue_job_and_maintain_ttl(1)
    assert taken is not None
    worker.execute_job(taken[0], taken[1])
    assert waits == [rq_integration.WRITE_WAIT] * 2


def test_held_ends_are_handed_over_before_waiting_for_a_job(
    tmp_path: Path, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rq_integration, "HOLD_FOR", 3600.0)
    tracking = tracking_of(tmp_path, queue)
    counter = Recorded(tracking.app)
    worker = JobtrackSimpleWorker([queue], connection=queue.connection)
    worker._jobtrack_counter = counter
    ((_, ref),) = _enqueued(queue, 1)
    taken = worker.dequeue_job_and_maintain_ttl(1)
    assert taken is not None
    worker.execute_job(taken[0], taken[1])
    assert counter.calls == []
    queue.enqueue(succeed, 2)  # no item of jobtrack's: not counted
    taken = worker.dequeue_job_and_maintain_ttl(1)  # a job waits: still held
    assert taken is not None
    assert counter.calls == []
    worker.execute_job(taken[0], taken[1])
    began = time.monotonic()
    # handed over first, then waited: 1 s, its longest idle time
    assert worker.dequeue_job_and_maintain_ttl(1, max_idle_time=1) is None
    assert time.monotonic() - began >= 0.9
    assert counter.calls == [("done", ref, "")]


def test_held_ends_are_counted_when_the_worker_stops(
    tmp_path: Path, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rq_integration, "HOLD_FOR", 3600.0)
    tracking = tracking_of(tmp_path, queue)
    job, worker = _three_items_and_a_worker(tracking, queue)
    assert worker.work(burst=True, max_jobs=3)  # stops after its 3rd job, ends held
    assert stored_job(tracking, job.job.id).stage("send").completed_items == 3


def test_a_hand_over_that_fails_does_not_stop_the_worker(
    tmp_path: Path, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    tracking = tracking_of(tmp_path, queue)

    class Broken(Recorded):
        def done(self, ref: TaskRef) -> None:
            raise RuntimeError("counter broke")

    worker = JobtrackSimpleWorker([queue], connection=queue.connection)
    worker._jobtrack_counter = Broken(tracking.app)
    _enqueued(queue, 2)
    with caplog.at_level(logging.ERROR, logger=rq_integration.__name__):
        assert worker.work(burst=True)
    assert queue.job_ids == []
    assert [
        (r.getMessage(), r.exc_info is not None and str(r.exc_info[1]))
        for r in caplog.records
        if getattr(r, "action", None) == "task_end_not_counted"
    ] == [("2 RQ job ends not counted", "counter broke")]


def test_a_stop_requested_while_the_ends_are_handed_over_stops_the_worker(
    tmp_path: Path, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RQ's signal handler raises StopRequested when a stop comes while the
    # worker is idle, which it is while it counts: it is not swallowed.
    monkeypatch.setattr(rq_integration, "HOLD_MAX", 1)
    tracking = tracking_of(tmp_path, queue)

    class Stopping(Recorded):
        def done(self, ref: TaskRef) -> None:
            super().done(ref)
            raise StopRequested()

    worker = JobtrackSimpleWorker([queue], connection=queue.connection)
    counter = Stopping(tracking.app)
    worker._jobtrack_counter = counter
    made = _enqueued(queue, 3)
    worker.work(burst=True)
    assert [call[1] for call in counter.calls] == [made[0][1]]  # stopped after the first
    assert len(queue.job_ids) == 2
