"""Discovered stages seal themselves: once every stage that feeds a stage
has completed (its total sealed, every item counted), no handler can add to
it any more, and its total is final."""

from __future__ import annotations

from jobtrack.jobs.types import JobType
from jobtrack.model import Job
from jobtrack.store import JobStore

__all__ = ["ready_to_seal", "seal_ready"]


def ready_to_seal(job_type: JobType, job: Job) -> list[str]:
    """The discovered stages of ``job`` whose total is not sealed but whose
    feeding stages have all completed, in stage order. A stage fed by a
    stage that is itself waiting to be sealed is not ready yet."""
    ready = []
    for stage in job_type.stages:
        feeders = job_type.fed_by(stage)
        current = job.stages.get(stage)
        if not feeders or current is None or current.total_final:
            continue
        if all(_completed(job, feeder) for feeder in feeders):
            ready.append(stage)
    return ready


async def seal_ready(store: JobStore, job_type: JobType, job_id: str) -> Job:
    """Seal every discovered stage of the job that is ready, until none is
    (sealing one may complete it, and make a later one ready); returns the
    job as it is then. An active job only: an ended one is left as it is.
    Safe to call from several processes at once: sealing twice is a no-op.

    Raises:
        JobNotFound: no job has that id.
        StoreUnavailable: the store cannot be reached.
    """
    job = await store.get_job(job_id)
    while not job.status.terminal:
        ready = ready_to_seal(job_type, job)
        if not ready:
            break
        for stage in ready:
            await store.seal_total(job_id, stage)  # sealing twice is allowed
        job = await store.get_job(job_id)
    return job


def _completed(job: Job, stage: str) -> bool:
    current = job.stages.get(stage)
    return current is not None and current.total_final and current.status.terminal
