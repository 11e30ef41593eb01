"""The reference application's catalog: its port and backends."""

from __future__ import annotations

from collections.abc import Callable, Mapping

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
from jobtrack.store import JobStore, SqliteJobStore

__all__ = [
    "CATALOGS",
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


def _memory(store: JobStore) -> Catalog:
    return InMemoryCatalog()


def _sqlite(store: JobStore) -> Catalog:
    if not isinstance(store, SqliteJobStore):
        raise InvalidRequest(f"a {type(store).__qualname__} is not a SQLite store")
    return SqliteCatalog(store.database)


def _postgres(store: JobStore) -> Catalog:
    # Imported only when in use: psycopg is an optional extra.
    from jobtrack.pipeline.catalog.postgres import PostgresCatalog  # noqa: PLC0415
    from jobtrack.store.postgres import PostgresJobStore  # noqa: PLC0415

    if not isinstance(store, PostgresJobStore):
        raise InvalidRequest(f"a {type(store).__qualname__} is not a PostgreSQL store")
    return PostgresCatalog(store)


#: The catalog that goes with each store backend (``JobStore.backend``),
#: kept in the same database.
CATALOGS: Mapping[str, Callable[[JobStore], Catalog]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "postgres": _postgres,
}


def catalog_for(store: JobStore) -> Catalog:
    """The catalog kept beside this store (in the same database), chosen by
    the store's ``backend``.

    :raises InvalidRequest: no catalog goes with the store's backend, or the
        store is not of the kind its backend names.
    """
    backend = getattr(store, "backend", None)  # a user's wrapper may not name one
    factory = CATALOGS.get(backend) if isinstance(backend, str) else None
    if factory is None:
        raise InvalidRequest(
            f"no catalog for the store backend {backend!r} ({type(store).__name__}):"
            f" the backends are"
            f" {', '.join(CATALOGS)}"
        )
    return factory(store)
