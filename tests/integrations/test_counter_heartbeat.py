"""A framework's worker process beats as a jobtrack worker through its
TaskCounter: the tasks counted per job type and stage, the last error, and
stopped_at when the counter closes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from jobtrack.integrations import TaskCounter, TaskRef
from jobtrack.model import utc_now
from jobtrack.store import WorkerState
from tests.integrations.test_core import Recorder, calls, make_app


async def test_the_counter_beats_with_the_tasks_it_counted(tmp_path: Path) -> None:
    app = make_app(tmp_path, Recorder())
    async with app, app.start_job("emails") as producer:
        await producer.add("send", calls(10))
    job_id = producer.job.id
    counter = TaskCounter(app)
    for n in range(10):
        ref = TaskRef(job_id, "send", f"t{n}")
        if n == 3:
            counter.failed(ref, "SMTPError: refused")
        else:
            counter.done(ref)
    assert counter.flush(10.0)
    counter.close()

    async with app:
        (worker,) = await app.store.list_workers()
        points = await app.store.throughput(since=utc_now() - timedelta(minutes=5))
    assert worker.state is WorkerState.STOPPED
    assert worker.beat.stages == ("emails/send",)
    assert (worker.beat.done, worker.beat.failed) == (9, 1)
    assert worker.beat.last_error == "SMTPError: refused"
    assert [(p.job_type, p.stage, p.done, p.failed) for p in points] == [("emails", "send", 9, 1)]


async def test_only_what_the_store_counted_is_in_the_throughput(tmp_path: Path) -> None:
    app = make_app(tmp_path, Recorder())
    async with app, app.start_job("emails") as producer:
        await producer.add("send", calls(4))
    job_id = producer.job.id
    counter = TaskCounter(app)
    for n in range(4):
        counter.done(TaskRef(job_id, "send", f"t{n}"))
    assert counter.flush(10.0)
    counter.done(TaskRef(job_id, "send", "t1"))  # delivered again: counted before
    counter.failed(TaskRef(job_id, "send", "t2"), "late")  # the same: counted before
    assert counter.flush(10.0)
    counter.done(TaskRef("0" * 32, "send", "x"))  # an unknown job
    counter.done(TaskRef(job_id, "nope", "y"))  # an unknown stage
    assert counter.flush(10.0) is False
    counter.close()

    async with app:
        (worker,) = await app.store.list_workers()
        points = await app.store.throughput(since=utc_now() - timedelta(minutes=5))
        job = await app.store.get_job(job_id)
    assert job.stage("send").completed_items == 4
    assert [(p.job_type, p.stage, p.done, p.failed) for p in points] == [("emails", "send", 4, 0)]
    assert (worker.beat.done, worker.beat.failed) == (4, 0)
