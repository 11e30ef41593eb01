"""The failed items of a collection-scan job, as the catalog recorded them."""

from __future__ import annotations

from dataclasses import dataclass

from jobtrack.model import Job
from jobtrack.pipeline.catalog import ArtifactStatus, Catalog
from jobtrack.pipeline.stages import JOB_TYPE
from jobtrack.store.ledger import ItemFailure

__all__ = ["JobCollection", "job_collection", "job_failures"]


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


async def job_failures(catalog: Catalog, job: Job, limit: int | None = None) -> list[ItemFailure]:
    """The failed renditions of ``job``'s images: one failure per image and
    stage, keyed by the image's path in its collection, images by path and
    each image's stages by name, at most ``limit`` (None: all). The catalog
    keeps no count of attempts: each says 1. Empty for jobs of another type
    or without a collection.

    :raises StoreError: the catalog cannot be read.
    """
    collection = job_collection(job)
    if collection is None:
        return []
    states = await catalog.images_of_job(collection.id, job.id)
    found: list[ItemFailure] = []
    for state in sorted(states, key=lambda s: s.image.relpath):
        failed = sorted(
            (a for a in state.artifacts.values() if a.status is ArtifactStatus.FAILED),
            key=lambda a: a.kind,
        )
        found.extend(
            ItemFailure(
                stage=artifact.kind,
                key=state.image.relpath,
                error=artifact.error or "failed",
                attempts=1,
                failed_at=artifact.produced_at,
                payload={"image_id": state.image.id},
            )
            for artifact in failed
        )
        if limit is not None and len(found) >= limit:
            return found[:limit]
    return found
