"""RQ's integration in one process: what the producer records and
enqueues, the monitor's re-send, the queue's backlog, and
:class:`~jobtrack.integrations.rq.JobtrackSimpleWorker` counting each
job's end (a failure after its retries), on a store in SQLite and the
local Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, Retry

import jobtrack
from jobtrack.errors import InvalidRequest
from jobtrack.integrations import HEADER, TaskCall
from jobtrack.integrations.rq import (
    RETRIES,
    JobtrackSimpleWorker,
    RQTracking,
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
        registries = (made.finished_job_registry, made.failed_job_registry)
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
