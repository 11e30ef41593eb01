"""PostgreSQL settings that can never work fail at once, naming the setting;
a server that is only away is still an outage."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from jobtrack.errors import ConfigurationError, StoreUnavailable
from jobtrack.store import open_store
from jobtrack.store.postgres import PostgresJobStore
from jobtrack.store.postgres.conninfo import STORE_SETTING, masked, refusal
from tests.postgres import ADMIN_URL, database_url, require_server

pytestmark = pytest.mark.timeout(60)


async def first_use_fails(url: str) -> tuple[ConfigurationError, float]:
    store = PostgresJobStore(url)
    started = time.monotonic()
    try:
        with pytest.raises(ConfigurationError) as caught:
            await store.last_change()
    finally:
        await store.aclose()
    return caught.value, time.monotonic() - started


async def test_a_missing_database_fails_at_once_naming_the_setting() -> None:
    require_server()
    name = f"jobtrack_missing_{uuid.uuid4().hex[:8]}"
    error, took = await first_use_fails(database_url(name))
    assert took < 3
    assert error.setting == STORE_SETTING
    assert str(error) == (
        f"PostgreSQL refused the connection to {database_url(name)}:"
        f' database "{name}" does not exist (check JOBTRACK_STORE_URL / --store)'
    )


async def test_a_login_the_server_refuses_fails_at_once_with_the_password_masked() -> None:
    require_server()
    base = ADMIN_URL.rsplit("/", 1)[0].split("://", 1)[1].split("@", 1)[1]
    role = f"jobtrack_nobody_{uuid.uuid4().hex[:8]}"
    error, took = await first_use_fails(f"postgresql://{role}:hunter2@{base}/postgres")
    assert took < 3
    assert f'role "{role}" does not exist' in str(error)
    assert f"{role}:***@" in str(error)
    assert "hunter2" not in str(error)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://u:hunter2@127.0.0.1:5432/db?sslmode=bogus", "sslmode 'bogus' is not one of"),
        ("postgresql://u:hunter2@127.0.0.1:99999/db", "port '99999' is not a number in 1-65535"),
        (
            "postgresql://u:hunter2@127.0.0.1:5432/db?bogus=1",
            'invalid URI query parameter: "bogus"',
        ),
        ("postgresql://u:hunter2@[::1/db", "IPv6 host address"),
    ],
)
def test_a_url_that_cannot_work_is_refused_when_the_store_is_opened(url: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^bad store URL ") as caught:
        open_store(url)
    assert why in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert str(caught.value).endswith("(check JOBTRACK_STORE_URL / --store)")


async def test_a_server_that_is_away_is_still_an_outage() -> None:
    store = PostgresJobStore("postgresql://postgres@127.0.0.1:1/jobtrack", timeout=1.0)
    try:
        with pytest.raises(StoreUnavailable):
            await store.last_change()
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("message", "configuration"),
    [
        ('connection failed: ... failed: FATAL:  database "x" does not exist', True),
        ('connection failed: ... FATAL:  password authentication failed for user "u"', True),
        ("connection failed: ... FATAL:  no pg_hba.conf entry for host", True),
        ("connection failed: fe_sendauth: no password supplied", True),
        ('connection is bad: invalid target_session_attrs value: "x"', True),
        ("connection failed: ... FATAL:  sorry, too many clients already", False),
        ("connection failed: ... FATAL:  the database system is starting up", False),
        ("connection failed: ... Connection refused", False),
    ],
)
def test_which_connection_failures_are_configuration_errors(
    message: str, configuration: bool
) -> None:
    found = refusal(psycopg.OperationalError(message), "postgresql://u@h/db")
    assert (found is not None) is configuration


def test_passwords_are_masked_in_urls_and_key_value_strings() -> None:
    assert masked("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert masked("host=h password=s3cret dbname=db") == "host=h password=*** dbname=db"
    assert masked("host=h password='s 3' dbname=db") == "host=h password=*** dbname=db"
    assert masked("postgresql://u@h/db") == "postgresql://u@h/db"
