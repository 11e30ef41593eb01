"""The SQLite backend: the embedded default store."""

from jobtrack.store.sqlite.database import SqliteDatabase
from jobtrack.store.sqlite.store import SqliteJobStore

__all__ = ["SqliteDatabase", "SqliteJobStore"]
