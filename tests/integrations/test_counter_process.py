"""The counter in a process of its own (RQ's forking worker counts with it):
the ends written by its writer process, once per key, the failures
recorded; what it was handed written when its worker dies; a writer that
dies replaced."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import pytest

import jobtrack
from jobtrack.errors import InvalidRequest
from jobtrack.integrations import TaskRef
from jobtrack.integrations.counter_process import CounterProcess
from jobtrack.model import Job
from jobtrack.store.ledger import ItemFailure
from tests.integrations.test_core import Recorder, calls, make_app


async def _stored(app: jobtrack.App, job_id: str) -> Job:
    async with app:
        return await app.store.get_job(job_id)


def stored(app: jobtrack.App, job_id: str) -> Job:
    """The job as the store has it now."""
    return asyncio.run(_stored(app, job_id))


async def _new_job(app: jobtrack.App, items: int) -> str:
    async with app, app.start_job("emails") as producer:
        await producer.add("send", calls(items))
    return producer.job.id


async def failures(app: jobtrack.App, job_id: str) -> list[ItemFailure]:
    async with app:
        return await app.store.list_failures(job_id)


def new_job(app: jobtrack.App, items: int) -> str:
    """A new ``emails`` job of ``items`` items t0, t1..."""
    return asyncio.run(_new_job(app, items))


def running(pid: int) -> bool:
    """Whether ``pid`` (not a child of this process) runs: neither gone
    nor a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ended(pid: int, within: float = 30.0) -> bool:
    """Whether ``pid`` (a child of this process) ends within ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        time.sleep(0.02)
    return False


def test_the_ends_are_written_by_a_process_of_its_own(tmp_path: Path) -> None:
    app = make_app(tmp_path, Recorder())
    job_id = new_job(app, 5)
    counter = CounterProcess(app)
    assert counter.pid is None  # forked on first use
    with counter.gathering():
        for n in range(5):
            ref = TaskRef(job_id, "send", f"t{n}")
            if n == 2:
                counter.failed(ref, "SMTPError: refused", attempts=3)
            else:
                counter.done(ref)
        counter.done(TaskRef(job_id, "send", "t0"))  # delivered again
        assert counter.pid is None  # nothing handed over inside the block
    writer = counter.pid
    assert writer is not None
    assert writer != os.getpid()
    assert counter.flush(10.0)
    job = stored(app, job_id)
    stage = job.stage("send")
    assert (stage.completed_items, stage.failed_items) == (4, 1)
    (failure,) = asyncio.run(failures(app, job_id))
    assert (failure.key, failure.error, failure.attempts) == ("t2", "SMTPError: refused", 3)
    assert counter.reported == 6
    counter.close()
    assert counter.pid is None
    with pytest.raises(ChildProcessError):  # reaped by close
        os.waitpid(writer, os.WNOHANG)


def test_a_worker_killed_leaves_its_writer_to_write_what_it_was_handed(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, Recorder())
    job_id = new_job(app, 3)
    child = os.fork()
    if child == 0:  # the worker: hands 3 ends over, then is killed
        try:
            counter = CounterProcess(app)
            with counter.gathering():
                for n in range(3):
                    counter.done(TaskRef(job_id, "send", f"t{n}"))
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL
    # The writer, orphaned, sees its pipe close, writes and ends.
    deadline = time.monotonic() + 30
    while stored(app, job_id).stage("send").completed_items < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert stored(app, job_id).stage("send").completed_items == 3


def test_a_writer_that_dies_is_replaced_and_only_its_ends_are_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(tmp_path, Recorder())
    job_id = new_job(app, 4)
    counter = CounterProcess(app)
    counter.done(TaskRef(job_id, "send", "t0"))
    assert counter.flush(10.0)
    first = counter.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert ended(first)
    with caplog.at_level(logging.WARNING, logger="jobtrack.integrations.counter_process"):
        counter.done(TaskRef(job_id, "send", "t1"))  # to a dead writer: dropped
        counter.done(TaskRef(job_id, "send", "t2"))  # to a new one
        counter.done(TaskRef(job_id, "send", "t3"))
        assert counter.flush(10.0) is False  # t1 was dropped
        assert counter.flush(10.0)
    second = counter.pid
    assert second is not None
    assert second != first
    assert counter.dropped == 1
    assert [
        r.getMessage().split(" (")[0] for r in caplog.records if r.levelno >= logging.WARNING
    ] == [
        f"the counting process {first} is gone",
        "1 task ends not counted",
    ]
    counter.close()
    job = stored(app, job_id)
    assert job.stage("send").completed_items == 3  # t1 is the monitor's to send again


def test_signals_to_the_process_group_do_not_stop_the_writer(tmp_path: Path) -> None:
    app = make_app(tmp_path, Recorder())
    job_id = new_job(app, 2)
    counter = CounterProcess(app)
    counter.done(TaskRef(job_id, "send", "t0"))
    assert counter.flush(10.0)
    writer = counter.pid
    assert writer is not None
    os.kill(writer, signal.SIGTERM)  # what a service manager sends everyone
    os.kill(writer, signal.SIGINT)  # what a terminal's Ctrl-C sends
    counter.done(TaskRef(job_id, "send", "t1"))
    assert counter.flush(10.0)
    assert counter.pid == writer
    counter.close()
    assert stored(app, job_id).stage("send").completed_items == 2


def test_a_forked_child_counts_through_a_writer_of_its_own(tmp_path: Path) -> None:
    app = make_app(tmp_path, Recorder())
    job_id = new_job(app, 2)
    counter = CounterProcess(app)
    counter.done(TaskRef(job_id, "send", "t0"))
    parent_writer = counter.pid
    assert parent_writer is not None
    child = os.fork()
    if child == 0:
        code = 1
        try:
            assert counter.pid is None  # the parent's pipe was let go at the fork
            counter.done(TaskRef(job_id, "send", "t1"))
            assert counter.pid not in (None, parent_writer)
            assert counter.flush(10.0)
            counter.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == 0
    assert counter.flush(10.0)  # the parent's writer still answers
    assert counter.pid == parent_writer
    counter.close()
    assert stored(app, job_id).stage("send").completed_items == 2


def test_a_child_forked_after_the_writer_does_not_keep_it_waiting(tmp_path: Path) -> None:
    # A work horse (or RQ's scheduler) alive when its worker is killed must
    # not hold the writer's pipe open: the writer writes and ends at once.
    app = make_app(tmp_path, Recorder())
    job_id = new_job(app, 3)
    read, write = os.pipe()
    worker = os.fork()
    if worker == 0:
        try:
            os.close(read)
            counter = CounterProcess(app)
            with counter.gathering():
                for n in range(3):
                    counter.done(TaskRef(job_id, "send", f"t{n}"))
            horse = os.fork()
            if horse == 0:
                time.sleep(60)
                os._exit(0)
            os.write(write, f"{horse} {counter.pid}".encode())
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    os.close(write)
    horse, writer = (int(pid) for pid in os.read(read, 64).split())
    os.close(read)
    os.waitpid(worker, 0)
    try:
        deadline = time.monotonic() + 20
        while running(writer):  # it ends once its pipe is closed
            assert time.monotonic() < deadline, "the writer waited for the horse"
            time.sleep(0.05)
        assert running(horse)  # still alive: it was not what let the writer go
    finally:
        os.kill(horse, signal.SIGKILL)
    assert stored(app, job_id).stage("send").completed_items == 3


def test_a_flush_after_ends_were_dropped_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    counter = CounterProcess(make_app(tmp_path, Recorder()))
    monkeypatch.setattr(os, "fork", no_fork)
    counter.done(TaskRef("0" * 32, "send", "t0"))
    assert counter.dropped == 1
    assert counter.flush(1.0) is False
    assert counter.flush(1.0) is True  # nothing dropped since


def test_the_counter_process_refuses_a_store_in_memory(tmp_path: Path) -> None:
    app = jobtrack.App(jobtrack.Settings(data_dir=tmp_path, store_url="memory://"))
    with pytest.raises(InvalidRequest, match="other processes reach"):
        CounterProcess(app)
