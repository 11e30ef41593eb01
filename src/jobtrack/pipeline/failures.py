"""The failed items of a collection-scan job, as the catalog recorded them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobtrack.model import Job
from jobtrack.pipeline.catalog import ArtifactStatus, Catalog
from jobtrack.pipeline.stages import JOB_TYPE

__all__ = ["ItemFailure", "job_failures"]


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """One image that failed in one or more stages, and why."""

    image: str
    stages: tuple[str, ...]
    error: str

    def to_dict(self) -> dict[str, Any]:
        """As shown in JSON."""
        return {"image": self.image, "stages": list(self.stages), "error": self.error}


async def job_failures(catalog: Catalog, job: Job) -> list[ItemFailure]:
    """The images of ``job`` whose artifacts failed, by path; empty for
    jobs of another type."""
    if job.job_type != JOB_TYPE:
        return []
    states = await catalog.images_of_job(job.attributes["collection"]["id"], job.id)
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
