"""Retrying a job: a new job of the same type that does again exactly the
items the old one failed.

::

    new = await app.retry_job(old_id)   # new.attributes["retry_of"] == old_id

The failed items come from the old job's failures
(:meth:`~jobtrack.store.base.JobStore.list_failures`, every page), each
with its ledger payload, each added to its own stage of the new job,
discovered stages included. A stage that gets no items is sealed at once,
unless it is discovered and a stage feeding it gets items (or waits for
its own feeders): the handlers may add to it, and it seals itself once its
feeders complete. The old job gets a ``retried`` event naming the new one.
"""

from __future__ import annotations

from collections.abc import Mapping

from jobtrack.broker import Broker
from jobtrack.broker.base import clip
from jobtrack.errors import Conflict, InvalidRequest
from jobtrack.jobs.producer import JobProducer
from jobtrack.jobs.types import JobType
from jobtrack.model import Job, JobStatus
from jobtrack.store import JobStore
from jobtrack.store.ledger import ItemFailure, LedgerItem

__all__ = ["failed_items", "retry_job", "stages_left_open"]

#: Failures read per ``list_failures`` call.
PAGE = 1_000


async def failed_items(store: JobStore, job_id: str) -> dict[str, list[LedgerItem]]:
    """Every failed item of the job, with its ledger payload, per stage in
    (stage, key) order.

    :raises JobNotFound: no job has that id.
    :raises StoreUnavailable: the store cannot be reached.
    """
    items: dict[str, list[LedgerItem]] = {}
    after: tuple[str, str] | None = None
    while True:
        page: list[ItemFailure] = await store.list_failures(job_id, after=after, limit=PAGE)
        for failure in page:
            items.setdefault(failure.stage, []).append(LedgerItem(failure.key, failure.payload))
        if len(page) < PAGE:
            return items
        after = (page[-1].stage, page[-1].key)


def stages_left_open(job_type: JobType, stages_with_items: set[str]) -> set[str]:
    """The discovered stages a retry leaves unsealed: those fed by a stage
    that gets items, or by a stage itself left unsealed."""
    left: set[str] = set()
    for stage in job_type.stages:
        feeders = job_type.fed_by(stage)
        if any(f in stages_with_items or f in left for f in feeders):
            left.add(stage)
    return left


async def retry_job(
    store: JobStore, broker: Broker, job_types: Mapping[str, JobType], job_id: str
) -> Job:
    """Start a new job that does the failed items of the ended job
    ``job_id`` again (see the module); returns the new job.

    :raises JobNotFound: no job has that id.
    :raises Conflict: the job is still running, or has no failed items.
    :raises InvalidRequest: the job was cancelled, or its type is not registered.
    :raises StoreUnavailable: the store cannot be reached.
    :raises BrokerError: the broker refused a publish (the new job is then
        cancelled).
    """
    old = await store.get_job(job_id)
    if not old.status.terminal:
        raise Conflict(f"job {job_id} is still running: retry it once it has ended")
    if old.status is JobStatus.CANCELLED:
        raise InvalidRequest(f"job {job_id} was cancelled: start a new job instead")
    job_type = job_types.get(old.job_type)
    if job_type is None:
        known = ", ".join(sorted(job_types)) or "none"
        raise InvalidRequest(
            f"job {job_id} is of type {old.job_type!r}, which is not registered "
            f"(registered: {known})"
        )
    items = await failed_items(store, job_id)
    if not items:
        raise Conflict(f"job {job_id} has no failed items to retry")
    producer = JobProducer(
        store, broker, job_type, attributes={**old.attributes, "retry_of": job_id}
    )
    new = await producer.start()
    try:
        for stage in job_type.stages:
            if stage in items:
                await producer.add_to_stage(stage, items[stage])
        left = stages_left_open(job_type, set(items))
        new = await producer.seal_stages(s for s in job_type.stages if s not in left)
    except BaseException as exc:
        await producer.cancel(clip(f"the retry of job {job_id} failed: {exc!r}"))
        raise
    count = sum(len(stage_items) for stage_items in items.values())
    await store.add_event(
        job_id,
        "retried",
        f"{count} failed items retried as job {new.id}",
        {"job_id": new.id, "items": {stage: len(keys) for stage, keys in items.items()}},
    )
    return new
