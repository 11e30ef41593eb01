"""The store port: a domain-level, async protocol over jobs and stages.

Every backend applies the rules of :mod:`jobtrack.model.rules` atomically,
inside the store: an increment is one statement (or, with an item key, one
short transaction), never a read-modify-write in the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from jobtrack.errors import InvalidRequest
from jobtrack.model import RESERVED_ATTRIBUTES, Job, JobStatus, Stage, StageCounts

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "STUCK_QUERY_LIMIT",
    "Increment",
    "JobQuery",
    "JobStore",
    "validate_new_job",
]

DEFAULT_PAGE_SIZE = 50
#: At most this many jobs per stuck-job query, as the seed's ``Limit(100)``.
STUCK_QUERY_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Increment:
    """What an increment did: whether it counted, and the stage after it.

    ``job_status`` is the job's status when this increment ended its stage
    (the moment a job may have completed), and None otherwise.
    """

    counted: bool
    stage: Stage
    job_status: JobStatus | None = None


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Filters and paging for :meth:`JobStore.list_jobs`; newest first."""

    status: JobStatus | None = None
    job_type: str | None = None
    limit: int = DEFAULT_PAGE_SIZE
    offset: int = 0


def validate_new_job(
    job_type: str, stages: Sequence[str], attributes: Mapping[str, Any] | None
) -> None:
    """Refuse a job no backend should store."""
    if not job_type:
        raise InvalidRequest("a job needs a job_type")
    if not stages:
        raise InvalidRequest("a job needs at least one stage")
    if len(set(stages)) != len(stages) or not all(stages):
        raise InvalidRequest(f"stage names must be unique and non-empty: {list(stages)}")
    clash = RESERVED_ATTRIBUTES.intersection(attributes or {})
    if clash:
        raise InvalidRequest(f"attributes may not use reserved keys: {sorted(clash)}")


@runtime_checkable
class JobStore(Protocol):
    """Where jobs live. Unknown ids raise :class:`~jobtrack.errors.JobNotFound`
    or :class:`~jobtrack.errors.StageNotFound`; a store that cannot be reached
    raises :class:`~jobtrack.errors.StoreUnavailable`."""

    async def create_job(
        self,
        job_type: str,
        stages: Sequence[str],
        *,
        attributes: Mapping[str, Any] | None = None,
    ) -> Job:
        """Create a pending job with these stages, in this order."""
        ...

    async def get_job(self, job_id: str) -> Job:
        """The job as it is now."""
        ...

    async def list_jobs(self, query: JobQuery | None = None) -> list[Job]:
        """Jobs matching the query, newest first."""
        ...

    async def increment(
        self,
        job_id: str,
        stage: str,
        *,
        completed: int | None = None,
        failed: int = 0,
        item_key: str | None = None,
    ) -> Increment:
        """Count finished items atomically, with the status transitions they
        imply. With ``item_key``, the same (job, stage, item) counts once.

        ``completed`` defaults to 1, or to 0 when ``failed`` is given.
        """
        ...

    async def raise_total(self, job_id: str, stage: str, *, by: int) -> Stage:
        """Add ``by`` items to the stage's (unsealed) total."""
        ...

    async def seal_total(self, job_id: str, stage: str, *, total: int | None = None) -> Stage:
        """Make the stage's total final; it may complete at once."""
        ...

    async def start_stage(self, job_id: str, stage: str, *, message: str | None = None) -> Stage:
        """Mark a stage as started (and set its message)."""
        ...

    async def end_job(self, job_id: str, status: JobStatus, *, message: str = "") -> Job:
        """Complete, fail or cancel a job. A job already ended is left as it is."""
        ...

    async def find_stuck(
        self, job_type: str, *, updated_before: datetime, limit: int = STUCK_QUERY_LIMIT
    ) -> list[Job]:
        """Active jobs of this type not updated since ``updated_before``,
        oldest first (the seed's stuck-job query, on its index)."""
        ...

    async def set_counts(self, job_id: str, counts: Mapping[str, StageCounts]) -> Job:
        """Set stage counts to the ground truth (reconciliation), up or down."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
