"""The reference application's catalog: its port and backends."""

from __future__ import annotations

from jobtrack.errors import InvalidRequest
from jobtrack.pipeline.catalog.base import (
    Artifact,
    ArtifactStatus,
    Catalog,
    Collection,
    ImageRecord,
    ImageState,
    ScannedFile,
    image_id_for,
)
from jobtrack.pipeline.catalog.memory import InMemoryCatalog
from jobtrack.pipeline.catalog.sqlite import SqliteCatalog
from jobtrack.store import InMemoryJobStore, JobStore, SqliteJobStore

__all__ = [
    "Artifact",
    "ArtifactStatus",
    "Catalog",
    "Collection",
    "ImageRecord",
    "ImageState",
    "InMemoryCatalog",
    "ScannedFile",
    "SqliteCatalog",
    "catalog_for",
    "image_id_for",
]


def catalog_for(store: JobStore) -> Catalog:
    """The catalog kept beside this store (in the same database)."""
    if isinstance(store, SqliteJobStore):
        return SqliteCatalog(store.database)
    if isinstance(store, InMemoryJobStore):
        return InMemoryCatalog()
    if type(store).__name__ == "PostgresJobStore":  # imported only when in use
        from jobtrack.pipeline.catalog.postgres import PostgresCatalog  # noqa: PLC0415
        from jobtrack.store.postgres import PostgresJobStore  # noqa: PLC0415

        assert isinstance(store, PostgresJobStore)
        return PostgresCatalog(store)
    raise InvalidRequest(f"no catalog backend for {type(store).__name__}")
