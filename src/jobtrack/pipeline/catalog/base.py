"""The catalog: collections, their images and the artifacts made from them.

It is the reference application's ground truth: what the reconciler counts
when a job's own counters cannot be trusted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Artifact",
    "ArtifactStatus",
    "Catalog",
    "Collection",
    "ImageRecord",
    "ImageState",
    "ScannedFile",
    "artifact_from_row",
    "image_id_for",
]


class ArtifactStatus(StrEnum):
    """How making an artifact ended."""

    OK = "ok"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Collection:
    """A folder of images, known by its resolved root path."""

    id: str
    root: str
    job_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ScannedFile:
    """An image file as the scanner found it; size and mtime are its version."""

    relpath: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """An image of a collection, as of its latest scan."""

    id: str
    collection_id: str
    relpath: str
    size: int
    mtime_ns: int
    job_id: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class Artifact:
    """A rendition made (or not) from one version of one image."""

    image_id: str
    kind: str
    status: ArtifactStatus
    variant: str
    source_size: int
    source_mtime_ns: int
    produced_at: datetime
    path: str | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None

    def is_current(self, image: ImageRecord, variant: str) -> bool:
        """Made from this version of the image, with these settings."""
        return (
            self.variant == variant
            and self.source_size == image.size
            and self.source_mtime_ns == image.mtime_ns
        )


@dataclass(frozen=True, slots=True)
class ImageState:
    """An image and its artifacts, by kind."""

    image: ImageRecord
    artifacts: Mapping[str, Artifact]

    def current(self, kind: str, variant: str) -> Artifact | None:
        """The artifact of this kind if it is up to date, else None."""
        artifact = self.artifacts.get(kind)
        if artifact is not None and artifact.is_current(self.image, variant):
            return artifact
        return None

    def finished(self, kind: str, variant: str) -> Artifact | None:
        """The artifact if this image's item of that stage is done: a failure
        recorded for the current version, or a current rendition whose file
        is really on disk. None when it must be made (again)."""
        artifact = self.current(kind, variant)
        if artifact is None or artifact.status is ArtifactStatus.FAILED:
            return artifact
        if artifact.path is not None and Path(artifact.path).is_file():
            return artifact
        return None


def artifact_from_row(row: Sequence[Any], produced_at: datetime) -> Artifact:
    """An artifact from a row of the artifacts table, in column order
    (``produced_at`` converted by the backend)."""
    return Artifact(
        image_id=row[0],
        kind=row[1],
        status=ArtifactStatus(row[2]),
        variant=row[3],
        source_size=row[4],
        source_mtime_ns=row[5],
        produced_at=produced_at,
        path=row[7],
        error=row[8],
        width=row[9],
        height=row[10],
    )


def image_id_for(collection_id: str, relpath: str) -> str:
    """A stable id for an image: the same file keeps its id across scans."""
    digest = hashlib.blake2b(f"{collection_id}\0{relpath}".encode(), digest_size=12)
    return digest.hexdigest()


@runtime_checkable
class Catalog(Protocol):
    """Where the reference application records collections and artifacts."""

    async def ensure_collection(self, root: str) -> Collection:
        """The collection at this resolved root, created on first use."""
        ...

    async def get_collection(self, collection_id: str) -> Collection:
        """The collection; CollectionNotFound if there is none."""
        ...

    async def swap_job(self, collection_id: str, *, expected: str | None, job_id: str) -> bool:
        """Make ``job_id`` the collection's current job if its current job is
        still ``expected``; False if another scan got there first."""
        ...

    async def register_images(
        self, collection_id: str, job_id: str, files: Sequence[ScannedFile]
    ) -> list[ImageState]:
        """Record the files as seen by this job's scan; return them with their artifacts."""
        ...

    async def retire_unseen(self, collection_id: str, job_id: str) -> list[str]:
        """Mark images this job's scan did not see as gone and forget their
        artifacts; return the artifacts' file paths, for removal."""
        ...

    async def get_image(self, image_id: str) -> ImageRecord:
        """One image; NotFound if there is none."""
        ...

    async def record_artifact(self, artifact: Artifact) -> None:
        """Record how making an artifact ended, replacing the previous one."""
        ...

    async def images_of_job(self, collection_id: str, job_id: str) -> list[ImageState]:
        """The images this job's scan saw, with their artifacts."""
        ...
