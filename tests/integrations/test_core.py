"""The integrations' shared parts: a job type whose items a sender sends
(the producer and the monitor's re-drive go through it), and the worker
side's counter, in a thread of its own and after a fork."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import jobtrack
from jobtrack.errors import InvalidRequest
from jobtrack.integrations import TaskCall, TaskCounter, TaskRef
from jobtrack.integrations import counter as counter_module
from jobtrack.model import Job, JobStatus
from jobtrack.store.ledger import LedgerItem
from jobtrack.store.sqlite.store import SqliteJobStore
from jobtrack.tracking.stats import WRITE_STATS


class Recorder:
    """A sender that keeps what it is asked to send."""

    def __init__(self, depth: int | None = None) -> None:
        self.sent: list[tuple[str, str, TaskCall]] = []
        self.depth = depth

    async def send(self, job: Job, stage: str, items: Sequence[LedgerItem]) -> None:
        for item in items:
            self.sent.append((stage, item.key, TaskCall.from_payload(item.payload)))

    async def backlog(self, stage: str) -> int | None:
        return self.depth


def make_app(tmp_path: Path, sender: Recorder) -> jobtrack.App:
    settings = jobtrack.Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'j.db'}")
    app = jobtrack.App(settings)
    app.job_type("emails", ["send"], sender=sender)
    return app


def calls(n: int) -> list[tuple[str, dict[str, object]]]:
    return [(f"t{i}", TaskCall("mail.send", (i,), {"to": f"u{i}"}).payload()) for i in range(n)]


def test_a_task_call_round_trips_and_bad_payloads_are_refused() -> None:
    call = TaskCall("a.b", (1, "x"), {"k": [1]}, {"queue": "q"}, task_id="id-1")
    assert TaskCall.from_payload(call.payload()) == TaskCall(
        "a.b", (1, "x"), {"k": [1]}, {"queue": "q"}, "id-1"
    )
    assert call.id_for("key") == "id-1"
    assert TaskCall("a.b").id_for("key") == "key"
    bad: object
    for bad in (None, [], {"task": 3}, {"task": "x", "args": {}}, {"task": "x", "id": 4}):
        with pytest.raises(InvalidRequest, match="not a task's ledger payload"):
            TaskCall.from_payload(bad)
    with pytest.raises(InvalidRequest, match="must be JSON"):
        TaskCall("a.b", (object(),)).payload()


def test_a_task_ref_travels_as_a_header() -> None:
    ref = TaskRef("job-1", "send", "k1")
    assert TaskRef.from_header(ref.header()) == ref
    assert TaskRef.from_header('{"job": "job-1", "stage": "send", "key": "k1"}') == ref
    assert TaskRef.from_header(None) is None
    for bad in ({"job": "j"}, "nope", {"job": "j", "stage": "s", "key": ""}, 42):
        assert TaskRef.from_header(bad) is None


def test_a_type_with_a_sender_takes_no_handler(tmp_path: Path) -> None:
    app = make_app(tmp_path, Recorder())
    emails = app.get_type("emails")
    emails.check_complete()  # no handlers needed
    with pytest.raises(InvalidRequest, match="no handlers"):
        emails.handler("send")(lambda item: None)


async def test_the_producer_sends_through_the_sender_after_the_ledger(tmp_path: Path) -> None:
    sender = Recorder()
    app = make_app(tmp_path, sender)
    async with app, app.start_job("emails") as producer:
        assert await producer.add("send", calls(2_500)) == 2_500
    assert [key for _, key, _ in sender.sent] == [f"t{i}" for i in range(2_500)]
    assert sender.sent[7][2] == TaskCall("mail.send", (7,), {"to": "u7"})
    async with app:
        job = await app.store.get_job(producer.job.id)
        assert (job.stage("send").total_items, job.stage("send").total_final) == (2_500, True)


def test_the_sync_producer_needs_no_broker_for_a_sender(tmp_path: Path) -> None:
    sender = Recorder()
    app = make_app(tmp_path, sender)  # broker: the default, in memory
    with app.start_job_sync("emails") as producer:
        producer.add("send", calls(3))
    assert len(sender.sent) == 3


async def test_the_monitor_sends_the_missing_tasks_again_through_the_sender(
    tmp_path: Path,
) -> None:
    sender = Recorder(depth=None)
    app = make_app(tmp_path, sender)
    async with app:
        async with app.start_job("emails") as producer:
            await producer.add("send", calls(10))
        job_id = producer.job.id
        for n in range(7):
            assert await app.tracker.increment(job_id, "send", item_key=f"t{n}")
        sender.sent.clear()
        (reconciler,) = [r for r in app.reconcilers() if r.job_type == "emails"]
        assert reconciler.can_redrive
        assert await reconciler.backlog() == {}  # depth unknown: left out
        job = await app.store.get_job(job_id)
        truth = await reconciler.truth(job)
        assert truth.missing == {"send": ["t7", "t8", "t9"]}
        assert await reconciler.redrive(job, truth.missing) == 3
        assert [(key, call.args) for _, key, call in sender.sent] == [
            ("t7", (7,)),
            ("t8", (8,)),
            ("t9", (9,)),
        ]
        sender.depth = 4
        assert await reconciler.backlog() == {"send": 4}


async def test_the_counter_counts_from_threads_once_per_key_and_records_failures(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, Recorder())
    async with app, app.start_job("emails") as producer:
        await producer.add("send", calls(400))
    job_id = producer.job.id
    counter = TaskCounter(app)

    def work(start: int) -> None:
        for n in range(start, 400, 4):
            ref = TaskRef(job_id, "send", f"t{n}")
            for _ in range(2 if n % 7 == 0 else 1):  # a redelivery: counted once
                if n % 50 == 0:
                    counter.failed(ref, f"ValueError: bad {n}", attempts=3)
                else:
                    counter.done(ref)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.flush(10.0)
    counter.close()
    async with app:
        job = await app.store.get_job(job_id)
        failures = await app.store.list_failures(job_id)
    stage = job.stage("send")
    assert (stage.completed_items, stage.failed_items) == (392, 8)
    assert job.status is JobStatus.COMPLETED
    assert sorted((f.key, f.error, f.attempts) for f in failures) == sorted(
        (f"t{n}", f"ValueError: bad {n}", 3) for n in range(0, 400, 50)
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_a_forked_child_counts_with_a_counter_of_its_own(tmp_path: Path) -> None:
    app = make_app(tmp_path, Recorder())
    async with app, app.start_job("emails") as producer:
        await producer.add("send", calls(4))
    job_id = producer.job.id
    counter = TaskCounter(app)
    counter.done(TaskRef(job_id, "send", "t0"))
    assert counter.flush(10.0)
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread is not here
        try:
            for n in (1, 2):
                counter.done(TaskRef(job_id, "send", f"t{n}"))
            os._exit(0 if counter.flush(10.0) and counter.reported == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    counter.done(TaskRef(job_id, "send", "t3"))
    assert counter.flush(10.0)
    assert counter.reported == 2
    counter.close()
    async with app:
        job = await app.store.get_job(job_id)
    assert (job.stage("send").completed_items, job.status) == (4, JobStatus.COMPLETED)


def test_the_counter_refuses_a_store_in_memory(tmp_path: Path) -> None:
    app = jobtrack.App(jobtrack.Settings(data_dir=tmp_path, store_url="memory://"))
    with pytest.raises(InvalidRequest, match="store other processes reach"):
        TaskCounter(app)


async def test_the_cli_shows_a_senders_job_like_any_other(tmp_path: Path) -> None:
    sender = Recorder()
    app = make_app(tmp_path, sender)
    async with app, app.start_job("emails") as producer:
        await producer.add("send", calls(5))
    job_id = producer.job.id
    counter = TaskCounter(app)
    for n in range(4):
        counter.done(TaskRef(job_id, "send", f"t{n}"))
    counter.failed(TaskRef(job_id, "send", "t4"), "SMTPError: mailbox full", attempts=2)
    assert counter.flush(10.0)
    counter.close()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jobtrack", "jobs", "show", job_id, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "JOBTRACK_STORE_URL": app.settings.store_url},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    stage = shown["stages"]["send"]
    counts = (stage["total_items"], stage["completed_items"], stage["failed_items"])
    assert (shown["job_type"], shown["status"], counts) == ("emails", "completed", (5, 4, 1))
    assert [(f["image"], f["error"]) for f in shown["failures"]] == [
        ("t4", "SMTPError: mailbox full")
    ]


async def test_a_retry_touches_the_job_at_most_every_few_seconds(tmp_path: Path) -> None:
    app = make_app(tmp_path, Recorder())
    async with app, app.start_job("emails") as producer:
        await producer.add("send", calls(2))
    job_id = producer.job.id
    async with app:
        before = (await app.store.get_job(job_id)).updated_at
    counter = TaskCounter(app)
    counter.retrying(TaskRef(job_id, "send", "t0"))
    counter.retrying(TaskRef(job_id, "send", "t1"))  # within TOUCH_EVERY: no second write
    assert counter.flush(10.0)
    counter.close()
    async with app:
        job = await app.store.get_job(job_id)
    assert job.updated_at > before
    assert job.stage("send").message == "retrying: t0 and maybe more"
    assert (job.stage("send").completed_items, job.stage("send").failed_items) == (0, 0)


def test_a_count_the_store_cannot_take_is_dropped_not_raised(tmp_path: Path) -> None:
    # A store that cannot open: the framework's worker goes on, the count is
    # logged and dropped, and the monitor sends the task again. (A store that
    # is down keeps the counts instead, and writes them when it is back.)
    folder = tmp_path / "a-folder"  # a database that is a folder cannot open
    folder.mkdir()
    settings = jobtrack.Settings(data_dir=tmp_path, store_url=f"sqlite:///{folder}")
    app = jobtrack.App(settings)
    app.job_type("emails", ["send"], sender=Recorder())
    counter = TaskCounter(app, flush_timeout=2.0)
    counter.done(TaskRef("job-1", "send", "t0"))
    counter.failed(TaskRef("job-1", "send", "t1"), "boom")
    assert (counter.reported, counter.dropped, counter.running) == (2, 2, False)
    assert counter.flush(1.0)  # nothing running: nothing to wait for


def make_two_stage_app(tmp_path: Path, flush_interval: float = 0.1) -> jobtrack.App:
    settings = jobtrack.Settings(
        data_dir=tmp_path,
        store_url=f"sqlite:///{tmp_path / 'j.db'}",
        flush_interval=flush_interval,
    )
    app = jobtrack.App(settings)
    app.job_type("emails", ["send", "check"], sender=Recorder())
    return app


async def new_job(app: jobtrack.App, items: int) -> str:
    async with app, app.start_job("emails") as producer:
        await producer.add("send", calls(items))
        await producer.add("check", calls(items))
    return producer.job.id


async def counted(app: jobtrack.App, job_id: str, stage: str) -> int:
    async with app:
        return (await app.store.get_job(job_id)).stage(stage).completed_items


async def test_task_ends_wake_the_counters_thread_once_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(counter_module, "BATCH", 100)
    app = make_two_stage_app(tmp_path, flush_interval=5.0)  # no wake-up but full batches
    job_id = await new_job(app, 1_050)
    counter = TaskCounter(app)
    counter.start()
    running = counter._running
    assert running is not None
    wakes: list[object] = []
    call = running.loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        if getattr(callback, "__self__", None) is running:  # not the store's or heartbeat's
            wakes.append(callback)
        return call(callback, *args)

    monkeypatch.setattr(running.loop, "call_soon_threadsafe", counting)

    def work(start: int) -> None:
        for n in range(start, 1_050, 3):
            counter.done(TaskRef(job_id, "send", f"t{n}"))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # One wake-up arms the lingering take; then one per full batch at most.
    assert 1 <= len(wakes) <= 1 + 1_050 // 100
    assert counter.flush(10.0)
    assert await counted(app, job_id, "send") == 1_050
    counter.close()


async def test_a_flush_makes_what_was_reported_before_it_durable_while_others_report(
    tmp_path: Path,
) -> None:
    app = make_two_stage_app(tmp_path, flush_interval=5.0)  # only flushes write soon
    job_id = await new_job(app, 300)
    counter = TaskCounter(app)
    stop = threading.Event()

    def race() -> None:  # reports all along, in the other stage
        n = 0
        while not stop.is_set() and n < 300:
            counter.done(TaskRef(job_id, "check", f"t{n}"))
            n += 1

    racer = threading.Thread(target=race)
    racer.start()
    try:
        for n in range(20):
            counter.done(TaskRef(job_id, "send", f"t{n}"))
            assert counter.flush(10.0)
            assert await counted(app, job_id, "send") == n + 1
    finally:
        stop.set()
        racer.join()
    assert counter.flush(10.0)
    assert await counted(app, job_id, "check") == counter.reported - 20
    counter.close()


async def test_closing_writes_the_ends_still_waiting_and_a_closed_counter_starts_again(
    tmp_path: Path,
) -> None:
    app = make_two_stage_app(tmp_path, flush_interval=5.0)
    job_id = await new_job(app, 3)
    counter = TaskCounter(app)
    counter.done(TaskRef(job_id, "send", "t0"))
    counter.failed(TaskRef(job_id, "send", "t1"), "ValueError: no")
    counter.close()  # no flush first: close writes what waits
    assert not counter.running
    async with app:
        stage = (await app.store.get_job(job_id)).stage("send")
    assert (stage.completed_items, stage.failed_items) == (1, 1)
    counter.done(TaskRef(job_id, "send", "t2"))
    assert counter.running
    assert counter.flush(10.0)
    counter.close()
    assert await counted(app, job_id, "send") == 2
    assert counter.dropped == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_ends_waiting_at_a_fork_are_the_parents_alone(tmp_path: Path) -> None:
    app = make_two_stage_app(tmp_path, flush_interval=5.0)
    job_id = await new_job(app, 3)
    counter = TaskCounter(app)
    counter.done(TaskRef(job_id, "send", "t0"))  # waits for the counter's thread
    pid = os.fork()
    if pid == 0:  # the child: none of the parent's waiting ends come along
        try:
            counter.done(TaskRef(job_id, "send", "t1"))
            ok = counter.flush(10.0) and counter.reported == 1
            counter.close()
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert await counted(app, job_id, "send") == 1  # the child's, the parent's waits still
    assert counter.flush(10.0)
    assert await counted(app, job_id, "send") == 2
    counter.done(TaskRef(job_id, "send", "t2"))
    counter.close()
    assert await counted(app, job_id, "send") == 3


def test_the_ends_waiting_at_exit_are_written(tmp_path: Path) -> None:
    script = f"""
import jobtrack, sys, asyncio
from jobtrack.integrations import TaskCounter, TaskRef
settings = jobtrack.Settings(
    data_dir={str(tmp_path)!r}, store_url={f"sqlite:///{tmp_path / 'j.db'}"!r},
    flush_interval=30.0,
)
app = jobtrack.App(settings)
counter = TaskCounter(app)
for n in range(5):
    counter.done(TaskRef(sys.argv[1], "send", f"t{{n}}"))
"""
    app = make_two_stage_app(tmp_path)
    job_id = asyncio.run(new_job(app, 5))
    done = subprocess.run(
        [sys.executable, "-c", script, job_id],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert asyncio.run(counted(app, job_id, "send")) == 5


async def test_ends_gathered_by_a_thread_wait_for_its_flush(tmp_path: Path) -> None:
    app = make_app(tmp_path, Recorder())
    async with app, app.start_job("emails") as producer:
        await producer.add("send", calls(3))
    job_id = producer.job.id
    counter = TaskCounter(app.with_settings(replace(app.settings, flush_interval=0.05)))
    counter.start()

    async def counted() -> int:
        async with app.with_settings(app.settings) as opened:
            return (await opened.store.get_job(job_id)).stage("send").completed_items

    with counter.gathering():
        counter.done(TaskRef(job_id, "send", "t0"))
        await asyncio.sleep(0.5)  # ten flush intervals: nothing woke the counter's thread
        assert await counted() == 0
        assert counter.flush(10.0)
        assert await counted() == 1
        counter.done(TaskRef(job_id, "send", "t1"))
    # Leaving the block has what waits taken at the flush interval.
    deadline = asyncio.get_running_loop().time() + 10.0
    while await counted() < 2:
        assert asyncio.get_running_loop().time() < deadline, "t1 not counted after the block"
        await asyncio.sleep(0.02)
    counter.done(TaskRef(job_id, "send", "t2"))  # outside a block
    counter.close()
    assert await counted() == 3


async def test_a_busy_counter_writes_every_few_intervals_and_soon_once_ends_stop(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, Recorder())
    async with app, app.start_job("emails") as producer:
        await producer.add("send", calls(100))
    job_id = producer.job.id
    counter = TaskCounter(app.with_settings(replace(app.settings, flush_interval=0.1)))
    counter.start()
    before = WRITE_STATS.writes
    began = time.monotonic()
    for n in range(100):  # an end every 10 ms for about 1.2 s
        counter.done(TaskRef(job_id, "send", f"t{n}"))
        await asyncio.sleep(0.01)
    busy = time.monotonic() - began
    ended = time.monotonic()
    async with app.with_settings(app.settings) as opened:
        while (await opened.store.get_job(job_id)).stage("send").completed_items < 100:
            assert time.monotonic() - ended < 5.0, "the last ends not written"
            await asyncio.sleep(0.01)
    written = time.monotonic() - ended
    writes = WRITE_STATS.writes - before
    counter.close()
    # One write every 2.5 intervals while the ends come (not one an
    # interval), and the last ends within about an interval of the last.
    assert writes <= busy / 0.25 + 2, (writes, busy)
    assert written < 0.5, written


@pytest.mark.parametrize("keep_writing", [True, False])
async def test_a_flush_that_runs_out_is_cancelled_unless_asked_to_keep_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_writing: bool
) -> None:
    app = make_two_stage_app(tmp_path, flush_interval=60.0)  # only flushes write
    job_id = await new_job(app, 2)
    writes: list[str] = []
    add_progress = SqliteJobStore.add_progress

    async def slow(self: SqliteJobStore, progress: Any) -> Any:
        writes.append("started")
        await asyncio.sleep(0.5)  # a slow store
        written = await add_progress(self, progress)
        writes.append("ended")
        return written

    monkeypatch.setattr(SqliteJobStore, "add_progress", slow)
    counter = TaskCounter(app)
    counter.done(TaskRef(job_id, "send", "t0"))
    assert not await asyncio.to_thread(counter.flush, 0.1, keep_writing=keep_writing)
    await asyncio.sleep(1.0)
    # Kept on: the write ends. Cancelled: that write never ends, and the
    # count waits in the counter for a write of its own.
    if keep_writing:
        assert writes == ["started", "ended"]
        assert await counted(app, job_id, "send") == 1
    else:
        assert writes[0] == "started"
        assert writes[1:2] != ["ended"]
    monkeypatch.setattr(SqliteJobStore, "add_progress", add_progress)
    counter.close()
    assert await counted(app, job_id, "send") == 1
