"""The catalog in SQLite, in the same database file as the job store."""

from __future__ import annotations

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
from jobtrack.store.sqlite import SqliteDatabase
from jobtrack.store.sqlite.database import from_micros, on_database_thread, to_micros

__all__ = ["SqliteCatalog"]

_IMAGE_COLUMNS = "i.id, i.collection_id, i.relpath, i.size, i.mtime_ns, i.job_id, i.present"
_ARTIFACT_COLUMNS = (
    "a.image_id, a.kind, a.status, a.variant, a.source_size, a.source_mtime_ns,"
    " a.produced_at, a.path, a.error, a.width, a.height"
)


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
            conn.execute(
                "INSERT INTO collections (id, root, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (root) DO NOTHING",
                (new_id(), root, to_micros(self._clock())),
            )
            row = conn.execute(
                "SELECT id, root, job_id, created_at FROM collections WHERE root = ?", (root,)
            ).fetchone()
        return _collection(row)

    @on_database_thread
    def get_collection(self, collection_id: str) -> Collection:
        """The collection; CollectionNotFound if there is none."""
        with self.database.translate_errors():
            row = self.database.connection.execute(
                "SELECT id, root, job_id, created_at FROM collections WHERE id = ?",
                (collection_id,),
            ).fetchone()
        if row is None:
            raise CollectionNotFound(collection_id)
        return _collection(row)

    @on_database_thread
    def swap_job(self, collection_id: str, *, expected: str | None, job_id: str) -> bool:
        """Compare-and-set the collection's current job."""
        with self.database.write() as conn:
            cursor = conn.execute(
                "UPDATE collections SET job_id = ? WHERE id = ? AND job_id IS ?",
                (job_id, collection_id, expected),
            )
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
            conn.executemany(
                "INSERT INTO images (id, collection_id, relpath, size, mtime_ns, job_id, present)"
                " VALUES (?, ?, ?, ?, ?, ?, 1)"
                " ON CONFLICT (id) DO UPDATE SET size = excluded.size,"
                " mtime_ns = excluded.mtime_ns, job_id = excluded.job_id, present = 1",
                rows,
            )
        return self._states([row[0] for row in rows])

    @on_database_thread
    def retire_unseen(self, collection_id: str, job_id: str) -> list[str]:
        """Mark images this job's scan did not see as gone; forget their artifacts."""
        unseen = "SELECT id FROM images WHERE collection_id = ? AND job_id <> ? AND present = 1"
        with self.database.write() as conn:
            paths = [
                row[0]
                for row in conn.execute(
                    f"SELECT path FROM artifacts WHERE path IS NOT NULL AND image_id IN ({unseen})",
                    (collection_id, job_id),
                )
            ]
            conn.execute(
                f"DELETE FROM artifacts WHERE image_id IN ({unseen})", (collection_id, job_id)
            )
            conn.execute(
                f"UPDATE images SET present = 0 WHERE id IN ({unseen})", (collection_id, job_id)
            )
        return paths

    @on_database_thread
    def get_image(self, image_id: str) -> ImageRecord:
        """One image; NotFound if there is none."""
        with self.database.translate_errors():
            row = self.database.connection.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images i WHERE i.id = ?", (image_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"image {image_id!r} not found")
        return _image(row)

    @on_database_thread
    def record_artifact(self, artifact: Artifact) -> None:
        """Record how making an artifact ended, replacing the previous one."""
        with self.database.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO artifacts (image_id, kind, status, variant, source_size,"
                " source_mtime_ns, produced_at, path, error, width, height)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            rows = self.database.connection.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images i"
                " WHERE i.collection_id = ? AND i.job_id = ? ORDER BY i.relpath",
                (collection_id, job_id),
            ).fetchall()
            artifacts = self.database.connection.execute(
                f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts a JOIN images i ON i.id = a.image_id"
                " WHERE i.collection_id = ? AND i.job_id = ?",
                (collection_id, job_id),
            ).fetchall()
        return _join([_image(row) for row in rows], artifacts)

    def _states(self, image_ids: list[str]) -> list[ImageState]:
        if not image_ids:
            return []
        marks = ",".join("?" * len(image_ids))
        with self.database.translate_errors():
            conn = self.database.connection
            rows = conn.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images i WHERE i.id IN ({marks})", image_ids
            ).fetchall()
            artifacts = conn.execute(
                f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts a WHERE a.image_id IN ({marks})",
                image_ids,
            ).fetchall()
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
