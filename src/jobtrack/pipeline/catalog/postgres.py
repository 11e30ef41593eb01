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
from jobtrack.store.sql import load_queries

__all__ = ["PostgresCatalog"]

_Q = load_queries("jobtrack.pipeline.catalog", "postgres_queries.sql")


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
            await conn.execute(_Q["ensure_collection"], (new_id(), root, self._clock()))
            cursor = await conn.execute(_Q["collection_at"], (root,))
            row = await cursor.fetchone()
        assert row is not None
        return Collection(*row)

    async def get_collection(self, collection_id: str) -> Collection:
        """The collection; CollectionNotFound if there is none."""
        async with self._connection() as conn:
            cursor = await conn.execute(_Q["get_collection"], (collection_id,))
            row = await cursor.fetchone()
        if row is None:
            raise CollectionNotFound(collection_id)
        return Collection(*row)

    async def swap_job(self, collection_id: str, *, expected: str | None, job_id: str) -> bool:
        """Compare-and-set the collection's current job."""
        async with self._connection() as conn:
            cursor = await conn.execute(_Q["swap_job"], (job_id, collection_id, expected))
            return cursor.rowcount == 1

    async def register_images(
        self, collection_id: str, job_id: str, files: Sequence[ScannedFile]
    ) -> list[ImageState]:
        """Record the files as seen by this job's scan, in one statement."""
        ids = [image_id_for(collection_id, f.relpath) for f in files]
        async with self._connection() as conn:
            await conn.execute(
                _Q["register_images"],
                {
                    "collection": collection_id,
                    "job": job_id,
                    "ids": ids,
                    "paths": [f.relpath for f in files],
                    "sizes": [f.size for f in files],
                    "mtimes": [f.mtime_ns for f in files],
                },
            )
            return await self._states(conn, "", {"ids": ids}, order=ids)

    async def retire_unseen(self, collection_id: str, job_id: str) -> list[str]:
        """Mark images this job's scan did not see as gone; forget their artifacts."""
        params = {"collection": collection_id, "job": job_id}
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(_Q["forget_unseen_artifacts"], params)
            paths = [row[0] for row in await cursor.fetchall() if row[0]]
            await conn.execute(_Q["retire_unseen"], params)
        return paths

    async def get_image(self, image_id: str) -> ImageRecord:
        """One image; NotFound if there is none."""
        async with self._connection() as conn:
            cursor = await conn.execute(_Q["get_image"], (image_id,))
            row = await cursor.fetchone()
        if row is None:
            raise NotFound(f"image {image_id!r} not found")
        return ImageRecord(*row)

    async def record_artifact(self, artifact: Artifact) -> None:
        """Record how making an artifact ended, replacing the previous one."""
        async with self._connection() as conn:
            await conn.execute(
                _Q["record_artifact"],
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
            params = {"collection": collection_id, "job": job_id}
            return await self._states(conn, "_of_job", params)

    async def _states(
        self,
        conn: AsyncConnection[TupleRow],
        which: str,
        params: dict[str, Any],
        *,
        order: list[str] | None = None,
    ) -> list[ImageState]:
        """The images and artifacts the queries ``images{which}`` and
        ``artifacts{which}`` select."""
        images = await (await conn.execute(_Q[f"images{which}"], params)).fetchall()
        artifacts = await (await conn.execute(_Q[f"artifacts{which}"], params)).fetchall()
        by_image: dict[str, dict[str, Artifact]] = {row[0]: {} for row in images}
        for row in artifacts:
            by_image[row[0]][row[1]] = _artifact(row)
        states = {row[0]: ImageState(ImageRecord(*row), by_image[row[0]]) for row in images}
        return [states[i] for i in order] if order is not None else list(states.values())


def _artifact(row: Sequence[Any]) -> Artifact:
    return artifact_from_row(row, row[6])
