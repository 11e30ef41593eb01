"""Stores for the integration tests: SQLite, and PostgreSQL in a database of
each test module's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import database_url, require_server, scratch_database


@pytest.fixture(scope="module")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database for this test module alone."""
    require_server()
    with scratch_database(request.module.__name__.rsplit(".", 1)[-1][:20]) as name:
        yield database_url(name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store of each backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
