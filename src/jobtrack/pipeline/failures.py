"""The failed items of a collection-scan job, as the catalog recorded them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobtrack.model import Job
from jobtrack.pipeline.catalog import ArtifactStatus, Catalog
from jobtrack.pipeline.stages import JOB_TYPE

__all__ = ["ItemFailure", "JobCollection", "job_collection", "job_failures"]


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """One image that failed in one or more stages, and why."""

    image: str
    stages: tuple[str, ...]
    error: str

    def to_dict(self) -> dict[str, Any]:
        """As shown in JSON."""
        return {"image": self.image, "stages": list(self.stages), "error": self.error}


@dataclass(frozen=True, slots=True)
class JobCollection:
    """The collection a collection-scan job scans, as the job records it."""

    id: str
    path: str


def job_collection(job: Job) -> JobCollection | None:
    """The collection ``job`` records; None for a job of another type, or one
    made without a collection (by hand, through the library)."""
    found = job.attributes.get("collection") if job.job_type == JOB_TYPE else None
    if not isinstance(found, dict):
        return None
    key, path = found.get("id"), found.get("path")
    if not isinstance(key, str) or not isinstance(path, str):
        return None
    return JobCollection(key, path)


async def job_failures(catalog: Catalog, job: Job) -> list[ItemFailure]:
    """The images of ``job`` whose artifacts failed, by path; empty for
    jobs of another type or without a collection."""
    collection = job_collection(job)
    if collection is None:
        return []
    states = await catalog.images_of_job(collection.id, job.id)
    found = []
    for state in states:
        failed = sorted(
            (a for a in state.artifacts.values() if a.status is ArtifactStatus.FAILED),
            key=lambda a: a.kind,
        )
        if failed:
            stages = tuple(a.kind for a in failed)
            found.append(ItemFailure(state.image.relpath, stages, failed[0].error or "failed"))
    return found
