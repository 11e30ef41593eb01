"""The catalog in PostgreSQL, in the same database (and pool) as the job store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

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
from jobtrack.store.postgres import PostgresJobStore, migrate

__all__ = ["PostgresCatalog"]

_MIGRATIONS = "jobtrack.pipeline.catalog.postgres_migrations"
_IMAGE_COLUMNS = "i.id, i.collection_id, i.relpath, i.size, i.mtime_ns, i.job_id, i.present"
_ARTIFACT_COLUMNS = (
    "a.image_id, a.kind, a.status, a.variant, a.source_size, a.source_mtime_ns,"
    " a.produced_at, a.path, a.error, a.width, a.height"
)
_UNSEEN = (
    "SELECT id FROM images WHERE collection_id = %(collection)s AND job_id <> %(job)s AND present"
)


class PostgresCatalog:
    """A :class:`~jobtrack.pipeline.catalog.base.Catalog` in PostgreSQL."""

    def __init__(self, store: PostgresJobStore, *, clock: Clock = utc_now) -> None:
        self._store = store
        self._clock = clock
        self._migrated = False
        self._migrating = asyncio.Lock()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        async with self._store.connection() as conn:
            if not self._migrated:
                async with self._migrating:
                    if not self._migrated:
                        await migrate(
                            conn, "catalog", "jobtrack.pipeline.catalog.postgres_migrations"
                        )
                        self._migrated = True
            yield conn

    async def ensure_collection(self, root: str) -> Collection:
        """The collection at this root, created on first use."""
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO collections (id, root, created_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (root) DO NOTHING",
                (new_id(), root, self._clock()),
            )
            cursor = await conn.execute(
                "SELECT id, root, job_id, created_at FROM collections WHERE root = %s", (root,)
            )
            row = await cursor.fetchone()
        assert row is not None
        return Collection(*row)

    async def get_collection(self, collection_id: str) -> Collection:
        """The collection; CollectionNotFound if there is none."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT id, root, job_id, created_at FROM collections WHERE id = %s",
                (collection_id,),
            )
            row = await cursor.fetchone()
        if row is None:
            raise CollectionNotFound(collection_id)
        return Collection(*row)

    async def swap_job(self, collection_id: str, *, expected: str | None, job_id: str) -> bool:
        """Compare-and-set the collection's current job."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                "UPDATE collections SET job_id = %s"
                " WHERE id = %s AND job_id IS NOT DISTINCT FROM %s",
                (job_id, collection_id, expected),
            )
            return cursor.rowcount == 1

    async def register_images(
        self, collection_id: str, job_id: str, files: Sequence[ScannedFile]
    ) -> list[ImageState]:
        """Record the files as seen by this job's scan, in one statement."""
        ids = [image_id_for(collection_id, f.relpath) for f in files]
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO images (id, collection_id, relpath, size, mtime_ns, job_id, present)"
                " SELECT i, %(collection)s, r, s, m, %(job)s, true"
                " FROM unnest(%(ids)s::text[], %(paths)s::text[], %(sizes)s::bigint[],"
                "             %(mtimes)s::bigint[]) AS f (i, r, s, m)"
                " ON CONFLICT (id) DO UPDATE SET size = excluded.size,"
                " mtime_ns = excluded.mtime_ns, job_id = excluded.job_id, present = true",
                {
                    "collection": collection_id,
                    "job": job_id,
                    "ids": ids,
                    "paths": [f.relpath for f in files],
                    "sizes": [f.size for f in files],
                    "mtimes": [f.mtime_ns for f in files],
                },
            )
            return await self._states(conn, "i.id = ANY(%(ids)s)", {"ids": ids}, order=ids)

    async def retire_unseen(self, collection_id: str, job_id: str) -> list[str]:
        """Mark images this job's scan did not see as gone; forget their artifacts."""
        params = {"collection": collection_id, "job": job_id}
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(
                f"DELETE FROM artifacts WHERE image_id IN ({_UNSEEN}) RETURNING path", params
            )
            paths = [row[0] for row in await cursor.fetchall() if row[0]]
            await conn.execute(f"UPDATE images SET present = false WHERE id IN ({_UNSEEN})", params)
        return paths

    async def get_image(self, image_id: str) -> ImageRecord:
        """One image; NotFound if there is none."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images i WHERE i.id = %s", (image_id,)
            )
            row = await cursor.fetchone()
        if row is None:
            raise NotFound(f"image {image_id!r} not found")
        return ImageRecord(*row)

    async def record_artifact(self, artifact: Artifact) -> None:
        """Record how making an artifact ended, replacing the previous one."""
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO artifacts (image_id, kind, status, variant, source_size,"
                " source_mtime_ns, produced_at, path, error, width, height)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (image_id, kind) DO UPDATE SET status = excluded.status,"
                " variant = excluded.variant, source_size = excluded.source_size,"
                " source_mtime_ns = excluded.source_mtime_ns, produced_at = excluded.produced_at,"
                " path = excluded.path, error = excluded.error, width = excluded.width,"
                " height = excluded.height",
                (
                    artifact.image_id,
                    artifact.kind,
                    artifact.status.value,
                    artifact.variant,
                    artifact.source_size,
                    artifact.source_mtime_ns,
                    artifact.produced_at,
                    artifact.path,
                    artifact.error,
                    artifact.width,
                    artifact.height,
                ),
            )

    async def images_of_job(self, collection_id: str, job_id: str) -> list[ImageState]:
        """The images this job's scan saw, with their artifacts."""
        async with self._connection() as conn:
            return await self._states(
                conn,
                "i.collection_id = %(collection)s AND i.job_id = %(job)s",
                {"collection": collection_id, "job": job_id},
            )

    async def _states(
        self,
        conn: AsyncConnection[TupleRow],
        where: str,
        params: dict[str, Any],
        *,
        order: list[str] | None = None,
    ) -> list[ImageState]:
        images = await (
            await conn.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images i WHERE {where} ORDER BY i.relpath", params
            )
        ).fetchall()
        artifacts = await (
            await conn.execute(
                f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts a JOIN images i ON i.id = a.image_id"
                f" WHERE {where}",
                params,
            )
        ).fetchall()
        by_image: dict[str, dict[str, Artifact]] = {row[0]: {} for row in images}
        for row in artifacts:
            by_image[row[0]][row[1]] = _artifact(row)
        states = {row[0]: ImageState(ImageRecord(*row), by_image[row[0]]) for row in images}
        return [states[i] for i in order] if order is not None else list(states.values())


def _artifact(row: Sequence[Any]) -> Artifact:
    return artifact_from_row(row, row[6])
