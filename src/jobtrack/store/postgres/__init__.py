"""The PostgreSQL backend: the production store (``postgresql://…``)."""

from jobtrack.store.postgres.store import PostgresJobStore, migrate

__all__ = ["PostgresJobStore", "migrate"]
