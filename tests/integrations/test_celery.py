"""Celery's integration beyond the contract: the ledger item a signature
makes, the reference a task's request carries, failures next to successes,
counts made durable before a late ack, and the queue's depth."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, chain  # type: ignore[import-untyped]
from celery.app.task import Context  # type: ignore[import-untyped]
from celery.worker.request import Request as WorkerRequest  # type: ignore[import-untyped]

import jobtrack
from jobtrack.errors import InvalidRequest
from jobtrack.integrations import HEADER, TaskCall, TaskCounter, TaskRef
from jobtrack.integrations.celery import (
    CeleryTracking,
    TaskSender,
    error_text,
    item_of,
    task_ref,
    worker_request,
)
from jobtrack.model import JobStatus
from tests.integrations.contract import STAGE, TYPE, counted, job_of, wait_ended
from tests.integrations.drivers.celery import CeleryDriver, make

celery_app = Celery("unit", broker="memory://", set_as_current=False)
#: An expiry long past: a task sent with it is revoked as expired on receipt.
EXPIRED = datetime(2000, 1, 1, tzinfo=UTC).isoformat()


def test_a_signature_is_keyed_by_its_task_id_chosen_up_front() -> None:
    signature = celery_app.signature("mail.send", args=(1,), kwargs={"to": "a"}, queue="q")
    item = item_of(signature.set(task_id="id-1", priority=3))
    assert item.key == "id-1"
    assert TaskCall.from_payload(item.payload) == TaskCall(
        "mail.send", (1,), {"to": "a"}, {"queue": "q", "priority": 3}, ""
    )
    fresh = item_of(celery_app.signature("mail.send"))
    assert len(fresh.key) == 36  # a new UUID, the id every send uses
    assert TaskCall.from_payload(fresh.payload).id_for(fresh.key) == fresh.key


def test_a_signatures_own_headers_are_kept_and_sent_with_the_reference() -> None:
    ref = TaskRef("job-0", "send", "old").header()
    signature = celery_app.signature("mail.send", task_id="id-3")
    item = item_of(signature.set(headers={"trace": "t-1", HEADER: ref}))
    assert TaskCall.from_payload(item.payload).options == {"headers": {"trace": "t-1"}}
    assert (
        TaskCall.from_payload(item_of(signature.set(headers={HEADER: ref})).payload).options == {}
    )

    sent: list[dict[str, Any]] = []

    class Recording:
        _tasks: dict[str, Any] = {}  # none registered

        @contextlib.contextmanager
        def producer_or_acquire(self) -> Iterator[None]:
            yield None

        def send_task(self, name: str, **options: Any) -> None:
            sent.append({"name": name, **options})

    calls = [(item.key, TaskCall.from_payload(item.payload))]
    TaskSender(Recording(), "q")._send("job-1", "send", calls)
    assert sent == [
        {
            "name": "mail.send",
            "args": [],
            "kwargs": {},
            "task_id": "id-3",
            "headers": {"trace": "t-1", HEADER: TaskRef("job-1", "send", "id-3").header()},
            "producer": None,
            "add_to_parent": False,
        }
    ]


def test_a_task_is_sent_ignoring_its_result_as_its_own_apply_async_sends_it() -> None:
    # A task that ignores its result must not have the producer wait for one
    # (a Redis result backend would subscribe to each task's result).
    sender_app = Celery("ignoring", broker="memory://", set_as_current=False)
    sender_app.conf.update(task_ignore_result=True, task_default_queue="ignoring")

    def nothing() -> None:
        """A task that does nothing."""

    quiet = sender_app.task(name="t.quiet")(nothing)
    kept = sender_app.task(name="t.kept", ignore_result=False)(nothing)
    names = [quiet.name, kept.name, "t.unknown", quiet.name]  # the tasks made, as .s() does
    calls = [
        (f"k{n}", TaskCall(name, (), {}, {"ignore_result": False} if n == 3 else {}, ""))
        for n, name in enumerate(names)
    ]
    TaskSender(sender_app)._send("job-1", "send", calls)
    with sender_app.connection_for_read() as connection:
        queue = connection.SimpleQueue("ignoring")
        try:
            messages = [queue.get(timeout=1) for _ in names]
        finally:
            queue.close()
    assert [m.headers["task"] for m in messages] == names
    assert [m.headers["ignore_result"] for m in messages] == [True, False, None, False]
    assert not sender_app.finalized  # looked up as send_task does, without finalizing


def test_a_given_key_keeps_the_task_id_in_the_payload() -> None:
    item = item_of(celery_app.signature("mail.send", task_id="id-2"), key="user-7")
    assert item.key == "user-7"
    assert TaskCall.from_payload(item.payload).id_for("user-7") == "id-2"
    same = item_of(celery_app.signature("mail.send", task_id="user-7"), key="user-7")
    assert TaskCall.from_payload(same.payload).task_id == ""


def test_a_signature_that_is_not_json_or_a_canvas_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="must be JSON"):
        item_of(celery_app.signature("mail.send", args=(object(),)))
    steps = chain(celery_app.signature("a.b"), celery_app.signature("c.d"))
    with pytest.raises(InvalidRequest, match=r"not a 'celery\.chain' canvas"):
        item_of(steps)


def test_the_reference_is_read_from_the_request_or_its_headers() -> None:
    ref = TaskRef("job-1", "send", "k1")
    assert task_ref(Context({"id": "t", "jobtrack": ref.header()})) == ref
    assert task_ref(Context({"id": "t", "headers": {"jobtrack": ref.header()}})) == ref
    assert task_ref(Context({"id": "t"})) is None
    assert task_ref(Context({"id": "t", "jobtrack": {"job": "j"}})) is None


class Recording(TaskCounter):
    """A counter that records what it is told instead of counting."""

    def __init__(self, app: jobtrack.App) -> None:
        super().__init__(app)
        self.told: list[tuple[str, TaskRef, str]] = []

    def retrying(self, ref: TaskRef) -> None:
        self.told.append(("retrying", ref, ""))

    def failed(self, ref: TaskRef, error: str, *, attempts: int = 1) -> None:
        self.told.append(("failed", ref, f"{error} after {attempts}"))


class Reporting(WorkerRequest):  # type: ignore[misc]
    """A worker's request of a task (in the worker's main process) that
    reports the task's failure, as ``on_timeout`` and ``on_failure`` do."""

    def __init__(self, fields: dict[str, Any]) -> None:  # not a message's
        self.id = fields["id"]
        self._request_dict = fields

    def report(self, tracking: CeleryTracking, error: str, task_id: str | None = None) -> None:
        empty = SimpleNamespace(request=Context())  # the main process's view of the task
        tracking._on_failure(sender=empty, task_id=task_id or self.id, exception=ValueError(error))


def test_a_retry_touches_and_a_failure_without_its_request_uses_the_workers_one(
    tmp_path: Path,
) -> None:
    app = jobtrack.App(
        jobtrack.Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'j.db'}")
    )
    tracking = CeleryTracking(app, celery_app)
    counter = Recording(app)
    tracking._counter = counter
    ref = TaskRef("job-1", "send", "k1")
    tracking._on_retry(request=Context({"id": "t1", HEADER: ref.header()}))
    tracking._on_retry(request=Context({"id": "t9"}))  # not an item

    reporting = Reporting({"id": "t1", "retries": 2, HEADER: ref.header()})
    reporting.report(tracking, "late")
    # Another task's request is not taken; nor is one not up the callers.
    Reporting({"id": "t2", "retries": 0, HEADER: ref.header()}).report(tracking, "other", "t1")
    empty = SimpleNamespace(request=Context())
    tracking._on_failure(sender=empty, task_id="t1", exception=ValueError("nowhere"))
    tracking._on_revoked(request=Context({"id": "t1", "retries": 1, HEADER: ref.header()}))
    tracking._on_revoked(request=Context({"id": "t2"}), terminated=True)  # no reference
    Reporting({"id": "t3"}).report(tracking, "not an item")
    assert counter.told == [
        ("retrying", ref, ""),
        ("failed", ref, "ValueError: late after 3"),
        ("failed", ref, "revoked after 2"),
    ]


def test_a_workers_request_is_found_only_for_its_own_task_and_a_malformed_one_is_not_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = jobtrack.App(
        jobtrack.Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'j.db'}")
    )
    tracking = CeleryTracking(app, celery_app)
    counter = Recording(app)
    tracking._counter = counter
    bad = {"job": "job-1", "stage": "send"}  # no key
    Reporting({"id": "t1", HEADER: bad}).report(tracking, "late")
    assert "malformed" in caplog.text
    good = Reporting({"id": "t2", "retries": "x", HEADER: TaskRef("j", "s", "k").header()})
    good.report(tracking, "late")
    assert counter.told == [("failed", TaskRef("j", "s", "k"), "ValueError: late after 1")]
    assert worker_request("t2") is None  # not up this frame's callers
    assert worker_request(None) is None


def test_an_error_is_its_type_and_message() -> None:
    assert error_text(ValueError("task 3 failed")) == "ValueError: task 3 failed"
    assert error_text(None) == "unknown error"


def failures_of(driver: CeleryDriver, job_id: str) -> list[tuple[str, str, int]]:
    """The job's failures: key, error and attempts, by key."""

    async def failures() -> list[tuple[str, str, int]]:
        async with driver.app() as app:
            listed = await app.store.list_failures(job_id)
        return sorted((f.key, f.error, f.attempts) for f in listed)

    return asyncio.run(failures())


@pytest.fixture(params=["celery-rabbitmq", "celery-redis"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CeleryDriver]:
    made = make(tmp_path, request.param)
    try:
        yield made
    finally:
        made.close()


def test_failures_after_retries_and_successes_end_the_job_completed(
    driver: CeleryDriver,
) -> None:
    driver.start_workers()
    signatures = [
        driver.celery.signature("contract.ok", args=(0, 0.0)),
        driver.celery.signature("contract.fail", args=(1,)),
        driver.celery.signature("contract.ok", args=(2, 0.0)),
    ]
    with driver.tracking.start_job(TYPE) as job:
        keys = job.send_group(STAGE, signatures, keys=["a", "b", "c"])
    assert keys == ["a", "b", "c"]
    ended = wait_ended(driver, job.job.id)
    assert counted(ended) == (3, 2, 1, True)
    assert ended.status is JobStatus.COMPLETED

    async def failures() -> list[tuple[str, str, int]]:
        async with driver.app() as app:
            listed = await app.store.list_failures(job.job.id)
        return [(f.key, f.error, f.attempts) for f in listed]

    assert asyncio.run(failures()) == [("b", "ValueError: task 1 failed", 3)]
    assert driver.raw_count() == 2


def test_every_item_failing_fails_the_job_with_each_error(driver: CeleryDriver) -> None:
    driver.start_workers()
    job_id = driver.produce(2, task="fail")
    ended = wait_ended(driver, job_id)
    assert counted(ended) == (2, 0, 2, True)
    assert ended.status is JobStatus.FAILED  # a stage none of whose items is done fails

    async def failures() -> list[tuple[str, str, int]]:
        async with driver.app() as app:
            listed = await app.store.list_failures(job_id)
        return sorted((f.key, f.error, f.attempts) for f in listed)

    assert asyncio.run(failures()) == [
        ("k00000", "ValueError: task 0 failed", 3),
        ("k00001", "ValueError: task 1 failed", 3),
    ]


def test_time_limits_and_rejections_count_failed(driver: CeleryDriver) -> None:
    # Both are reported in the worker's main process, without the task's request.
    driver.start_workers()
    signatures = [
        driver.celery.signature("contract.hang", args=(0,)),
        driver.celery.signature("contract.reject", args=(1,)),
        driver.celery.signature("contract.ok", args=(2, 0.0)),
    ]
    with driver.tracking.start_job(TYPE) as job:
        job.send_group(STAGE, signatures, keys=["hang", "reject", "ok"])
    ended = wait_ended(driver, job.job.id, within=60)
    assert counted(ended) == (3, 1, 2, True)
    assert ended.status is JobStatus.COMPLETED
    assert failures_of(driver, job.job.id) == [
        ("hang", "billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1,)", 1),
        ("reject", "celery.exceptions.Reject: ('task 1 rejected', False)", 1),
    ]
    assert driver.raw_count() == 1


def test_an_expired_task_counts_failed(tmp_path: Path) -> None:
    # Revoked on receipt, before it runs (on Redis: RabbitMQ drops a message
    # whose expiry has passed, unseen by the worker).
    driver = make(tmp_path, "celery-redis")
    try:
        driver.start_workers()
        signatures = [
            driver.celery.signature("contract.ok", args=(0, 0.0), expires=EXPIRED),
            driver.celery.signature("contract.ok", args=(1, 0.0)),
        ]
        with driver.tracking.start_job(TYPE) as job:
            job.send_group(STAGE, signatures, keys=["expired", "ok"])
        ended = wait_ended(driver, job.job.id, within=60)
        assert counted(ended) == (2, 1, 1, True)
        assert failures_of(driver, job.job.id) == [("expired", "expired", 1)]
        assert driver.raw_count() == 1
    finally:
        driver.close()


def test_counts_are_durable_before_a_late_ack(driver: CeleryDriver) -> None:
    # Counts would wait 60 s for a flush; each task's end is flushed before
    # its message is acked instead, so the job ends well before that.
    driver.env["JOBTRACK_FLUSH_INTERVAL_MS"] = "60000"
    driver.env["JOBTRACK_TEST_FLUSH_BEFORE_ACK"] = "1"
    driver.start_workers()
    job_id = driver.produce(30)
    ended = wait_ended(driver, job_id, within=30)
    assert counted(ended) == (30, 30, 0, True)
    driver.kill_all()
    assert counted(job_of(driver, job_id)) == (30, 30, 0, True)
    assert driver.raw_count() == 30


def test_the_backlog_is_the_queue_depth(driver: CeleryDriver) -> None:
    sender = driver.tracking.sender
    assert asyncio.run(sender.backlog(STAGE)) == 0  # no queue yet: nothing waits
    driver.produce(7)
    assert asyncio.run(sender.backlog(STAGE)) == 7
    assert driver.purge() == 7
    assert asyncio.run(sender.backlog(STAGE)) == 0


def test_the_backlog_of_an_unreachable_broker_is_unknown() -> None:
    unreachable = Celery("gone", broker="redis://127.0.0.1:1/0", set_as_current=False)
    unreachable.conf.broker_connection_retry = False
    unreachable.conf.broker_connection_max_retries = 0
    assert asyncio.run(TaskSender(unreachable, "q").backlog(STAGE)) is None
