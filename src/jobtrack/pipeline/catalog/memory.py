"""An in-memory catalog, paired with the in-memory store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from jobtrack.errors import CollectionNotFound, NotFound
from jobtrack.model import Clock, new_id, utc_now
from jobtrack.pipeline.catalog.base import (
    Artifact,
    Collection,
    ImageRecord,
    ImageState,
    ScannedFile,
    image_id_for,
)

__all__ = ["InMemoryCatalog"]


class InMemoryCatalog:
    """A :class:`~jobtrack.pipeline.catalog.base.Catalog` held in dicts."""

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._collections: dict[str, Collection] = {}
        self._images: dict[str, ImageRecord] = {}
        self._artifacts: dict[str, dict[str, Artifact]] = {}

    async def ensure_collection(self, root: str) -> Collection:
        """The collection at this root, created on first use."""
        for collection in self._collections.values():
            if collection.root == root:
                return collection
        collection = Collection(id=new_id(), root=root, job_id=None, created_at=self._clock())
        self._collections[collection.id] = collection
        return collection

    async def get_collection(self, collection_id: str) -> Collection:
        """The collection; CollectionNotFound if there is none."""
        try:
            return self._collections[collection_id]
        except KeyError:
            raise CollectionNotFound(collection_id) from None

    async def swap_job(self, collection_id: str, *, expected: str | None, job_id: str) -> bool:
        """Compare-and-set the collection's current job."""
        collection = await self.get_collection(collection_id)
        if collection.job_id != expected:
            return False
        self._collections[collection_id] = replace(collection, job_id=job_id)
        return True

    async def register_images(
        self, collection_id: str, job_id: str, files: Sequence[ScannedFile]
    ) -> list[ImageState]:
        """Record the files as seen by this job's scan."""
        states = []
        for found in files:
            image = ImageRecord(
                id=image_id_for(collection_id, found.relpath),
                collection_id=collection_id,
                relpath=found.relpath,
                size=found.size,
                mtime_ns=found.mtime_ns,
                job_id=job_id,
            )
            self._images[image.id] = image
            states.append(ImageState(image, dict(self._artifacts.get(image.id, {}))))
        return states

    async def retire_unseen(self, collection_id: str, job_id: str) -> list[str]:
        """Mark images this job's scan did not see as gone; forget their artifacts."""
        paths: list[str] = []
        for image in list(self._images.values()):
            if image.collection_id == collection_id and image.job_id != job_id and image.present:
                self._images[image.id] = replace(image, present=False)
                artifacts = self._artifacts.pop(image.id, {})
                paths.extend(a.path for a in artifacts.values() if a.path)
        return paths

    async def get_image(self, image_id: str) -> ImageRecord:
        """One image; NotFound if there is none."""
        try:
            return self._images[image_id]
        except KeyError:
            raise NotFound(f"image {image_id!r} not found") from None

    async def record_artifact(self, artifact: Artifact) -> None:
        """Record how making an artifact ended."""
        await self.get_image(artifact.image_id)
        self._artifacts.setdefault(artifact.image_id, {})[artifact.kind] = artifact

    async def images_of_job(self, collection_id: str, job_id: str) -> list[ImageState]:
        """The images this job's scan saw, with their artifacts."""
        return [
            ImageState(image, dict(self._artifacts.get(image.id, {})))
            for image in sorted(self._images.values(), key=lambda i: i.relpath)
            if image.collection_id == collection_id and image.job_id == job_id
        ]
