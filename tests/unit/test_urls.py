"""Store URLs, read as SQLAlchemy reads them."""

from __future__ import annotations

import pytest

from jobtrack.errors import InvalidRequest
from jobtrack.store import InMemoryJobStore, open_store, sqlite_path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///jobs.db", "jobs.db"),
        ("sqlite:///data/jobs.db", "data/jobs.db"),
        ("sqlite:////var/lib/jobs.db", "/var/lib/jobs.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_paths(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    "url", ["sqlite://jobs.db", "sqlite:///", "sqlite:///x.db?mode=ro", "mysql://x", "bogus"]
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest):
        open_store(url)


def test_memory_url() -> None:
    assert isinstance(open_store("memory://"), InMemoryJobStore)
