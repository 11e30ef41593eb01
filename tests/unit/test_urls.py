"""Store URLs, read as SQLAlchemy reads them."""

from __future__ import annotations

import pytest

from jobtrack.errors import InvalidRequest, masked_url
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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://app:s3cret@mq:5672/jobs", "amqp://app:***@mq:5672/jobs"),
        (
            "postgresql://app:s3cret@db/jobtrack?sslmode=bogus",
            "postgresql://app:***@db/jobtrack?sslmode=bogus",
        ),
        ("postgresql://app@db/jobtrack", "postgresql://app@db/jobtrack"),
        ("amqp://app:s3cret@[::1/x", "amqp://app:***@[::1/x"),  # does not parse
        ("host=db password='a b' user=app", "host=db password=*** user=app"),
        ("host=db password=s3cret", "host=db password=***"),
    ],
)
def test_a_password_never_shows_in_a_url_said_back(url: str, shown: str) -> None:
    assert masked_url(url) == shown
