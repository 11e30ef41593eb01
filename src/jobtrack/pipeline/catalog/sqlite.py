"""The catalog in SQLite, in the same database file as the job store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jobtrack.errors import CollectionNotFound, NotFound
from jobtrack.model import Clock, new_id, utc_now
from jobtrack.pipeline.catalog.base import (
    Artifact,
    Collection,
    ImageRecord,
    ImageState,
    ScannedFile,
    artifact_from_row,
    image_id_for,
)
from jobtrack.store.sql import load_queries
from jobtrack.store.sqlite import SqliteDatabase
from jobtrack.store.sqlite.database import from_micros, on_database_thread, to_micros

__all__ = ["SqliteCatalog"]

_Q = load_queries("jobtrack.pipeline.catalog", "sqlite_queries.sql")


class SqliteCatalog:
    """A :class:`~jobtrack.pipeline.catalog.base.Catalog` in SQLite."""

    def __init__(self, database: SqliteDatabase, *, clock: Clock = utc_now) -> None:
        self.database = database
        self._clock = clock
        database.migrate("catalog", "jobtrack.pipeline.catalog.migrations")

    @on_database_thread
    def ensure_collection(self, root: str) -> Collection:
        """The collection at this root, created on first use."""
        with self.database.write() as conn:
            conn.execute(_Q["ensure_collection"], (new_id(), root, to_micros(self._clock())))
            row = conn.execute(_Q["collection_at"], (root,)).fetchone()
        return _collection(row)

    @on_database_thread
    def get_collection(self, collection_id: str) -> Collection:
        """The collection; CollectionNotFound if there is none."""
        with self.database.translate_errors():
            row = self.database.connection.execute(
                _Q["get_collection"], (collection_id,)
            ).fetchone()
        if row is None:
            raise CollectionNotFound(collection_id)
        return _collection(row)

    @on_database_thread
    def swap_job(self, collection_id: str, *, expected: str | None, job_id: str) -> bool:
        """Compare-and-set the collection's current job."""
        with self.database.write() as conn:
            cursor = conn.execute(_Q["swap_job"], (job_id, collection_id, expected))
            return cursor.rowcount == 1

    @on_database_thread
    def register_images(
        self, collection_id: str, job_id: str, files: Sequence[ScannedFile]
    ) -> list[ImageState]:
        """Record the files as seen by this job's scan, in one transaction."""
        rows = [
            (
                image_id_for(collection_id, f.relpath),
                collection_id,
                f.relpath,
                f.size,
                f.mtime_ns,
                job_id,
            )
            for f in files
        ]
        with self.database.write() as conn:
            conn.executemany(_Q["register_image"], rows)
        return self._states([row[0] for row in rows])

    @on_database_thread
    def retire_unseen(self, collection_id: str, job_id: str) -> list[str]:
        """Mark images this job's scan did not see as gone; forget their artifacts."""
        params = (collection_id, job_id)
        with self.database.write() as conn:
            paths = [row[0] for row in conn.execute(_Q["unseen_paths"], params)]
            conn.execute(_Q["forget_unseen_artifacts"], params)
            conn.execute(_Q["retire_unseen"], params)
        return paths

    @on_database_thread
    def get_image(self, image_id: str) -> ImageRecord:
        """One image; NotFound if there is none."""
        with self.database.translate_errors():
            row = self.database.connection.execute(_Q["get_image"], (image_id,)).fetchone()
        if row is None:
            raise NotFound(f"image {image_id!r} not found")
        return _image(row)

    @on_database_thread
    def record_artifact(self, artifact: Artifact) -> None:
        """Record how making an artifact ended, replacing the previous one."""
        with self.database.write() as conn:
            conn.execute(
                _Q["record_artifact"],
                (
                    artifact.image_id,
                    artifact.kind,
                    artifact.status.value,
                    artifact.variant,
                    artifact.source_size,
                    artifact.source_mtime_ns,
                    to_micros(artifact.produced_at),
                    artifact.path,
                    artifact.error,
                    artifact.width,
                    artifact.height,
                ),
            )

    @on_database_thread
    def images_of_job(self, collection_id: str, job_id: str) -> list[ImageState]:
        """The images this job's scan saw, with their artifacts."""
        with self.database.translate_errors():
            conn = self.database.connection
            rows = conn.execute(_Q["images_of_job"], (collection_id, job_id)).fetchall()
            artifacts = conn.execute(_Q["artifacts_of_job"], (collection_id, job_id)).fetchall()
        return _join([_image(row) for row in rows], artifacts)

    def _states(self, image_ids: list[str]) -> list[ImageState]:
        if not image_ids:
            return []
        ids = (json.dumps(image_ids),)
        with self.database.translate_errors():
            conn = self.database.connection
            rows = conn.execute(_Q["images"], ids).fetchall()
            artifacts = conn.execute(_Q["artifacts"], ids).fetchall()
        by_id = {row[0]: _image(row) for row in rows}
        return _join([by_id[i] for i in image_ids], artifacts)


def _join(images: list[ImageRecord], artifact_rows: list[Any]) -> list[ImageState]:
    by_image: dict[str, dict[str, Artifact]] = {image.id: {} for image in images}
    for row in artifact_rows:
        artifact = _artifact(row)
        by_image[artifact.image_id][artifact.kind] = artifact
    return [ImageState(image, by_image[image.id]) for image in images]


def _collection(row: Sequence[Any]) -> Collection:
    return Collection(id=row[0], root=row[1], job_id=row[2], created_at=from_micros(row[3]))


def _image(row: Sequence[Any]) -> ImageRecord:
    return ImageRecord(
        id=row[0],
        collection_id=row[1],
        relpath=row[2],
        size=row[3],
        mtime_ns=row[4],
        job_id=row[5],
        present=bool(row[6]),
    )


def _artifact(row: Sequence[Any]) -> Artifact:
    return artifact_from_row(row, from_micros(row[6]))
