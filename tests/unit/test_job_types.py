"""Declaring a job type: names, handlers, the stages they feed, queues, retries."""

from __future__ import annotations

import pytest

from jobtrack.errors import InvalidRequest
from jobtrack.jobs.types import Item, JobType, Retry


def nothing(item: Item) -> None:
    """A handler that does nothing."""


async def nothing_async(item: Item) -> None:
    """An async handler that does nothing."""


def test_stages_fed_by_handlers_are_discovered_and_the_rest_fed_by_the_producer() -> None:
    crawl = JobType("crawl", ["fetch", "links", "store"])
    crawl.handler("fetch", feeds=["links", "store"])(nothing)
    crawl.handler("links")(nothing_async)
    crawl.handler("store")(nothing)
    assert [crawl.discovered(stage) for stage in crawl.stages] == [False, True, True]
    assert crawl.fed_by("store") == ("fetch",)
    assert crawl.queue("links") == "jobtrack.crawl.links"
    assert crawl.handlers["links"].executor == "async"
    assert crawl.handlers["store"].executor == "thread"
    crawl.check_complete()


def test_declarations_that_cannot_work_are_refused_with_the_reason() -> None:
    job_type = JobType("t", ["a", "b"])
    with pytest.raises(InvalidRequest, match="can only feed a later stage"):
        job_type.handler("b", feeds=["a"])
    with pytest.raises(InvalidRequest, match="has no stage 'c'"):
        job_type.handler("c")
    with pytest.raises(InvalidRequest, match="needs an async def function"):
        job_type.handler("a", executor="async")(nothing)
    job_type.handler("a", queue="shared")(nothing)
    with pytest.raises(InvalidRequest, match="has a handler already"):
        job_type.handler("a")
    with pytest.raises(InvalidRequest, match="queue 'shared' is the 'a' stage's already"):
        job_type.handler("b", queue="shared")
    with pytest.raises(InvalidRequest, match=r"no handler for \['b'\]"):
        job_type.check_complete()
    for name, stages in [("Bad Name", ["a"]), ("t", []), ("t", ["a", "a"])]:
        with pytest.raises(InvalidRequest):
            JobType(name, stages)


def test_retries_back_off_doubling_and_never_past_the_cap() -> None:
    job_type = JobType("t", ["a"], retry_on=[TimeoutError], backoff=1.0, max_backoff=5.0)
    assert job_type.retryable(TimeoutError())
    assert job_type.retryable(Retry())
    assert not job_type.retryable(ValueError())
    assert [job_type.delay(attempt) for attempt in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert job_type.delay(1, Retry(after=0)) == 0.0
    assert job_type.delay(1, Retry(after=3600)) == 5.0


def test_an_item_adds_only_to_the_stages_its_handler_feeds() -> None:
    from jobtrack.model import Job, JobStatus, utc_now

    now = utc_now()
    job = Job(
        id="j",
        job_type="t",
        status=JobStatus.IN_PROGRESS,
        created_at=now,
        updated_at=now,
        stages={},
    )
    item = Item("k", {"n": 1}, job, "a", feeds=frozenset({"b"}))
    item.add("b", "k2", [1])
    with pytest.raises(InvalidRequest, match="feeds b, not 'c'"):
        item.add("c", "k3")
    assert [(stage, ledger.key, ledger.payload) for stage, ledger in item.added] == [
        ("b", "k2", [1])
    ]


def test_a_stage_the_producer_counts_needs_no_handler() -> None:
    scan = JobType("scan", ["walk", "render"], counted_by_producer=["walk"])
    with pytest.raises(InvalidRequest, match=r"no handler for \['render'\]"):
        scan.check_complete()
    scan.handler("render")(nothing)
    scan.check_complete()
    with pytest.raises(InvalidRequest, match="has no stage 'other'"):
        JobType("scan", ["walk"], counted_by_producer=["other"])
