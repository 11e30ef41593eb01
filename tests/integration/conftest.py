"""Stores for the integration tests: SQLite, and PostgreSQL in a database of
each test module's own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jobtrack.runtime import App
from tests.apps.harness import scratch_env, settings
from tests.apps.tally import app as tally_app
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


@pytest.fixture(scope="module")
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The environment of a module's worker and monitor processes: a
    PostgreSQL database and a RabbitMQ virtual host of its own, one image
    process (see :func:`tests.apps.harness.scratch_env`)."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:20]
    with scratch_env(tmp_path_factory.mktemp(name), name, JOBTRACK_WORKERS="1") as made:
        yield made


@pytest.fixture
async def app(env: dict[str, str]) -> AsyncIterator[App]:
    """The tally app (``tests.apps.tally``) open on :func:`env`'s settings."""
    async with tally_app.with_settings(settings(env)) as opened:
        yield opened
