"""The settings, fuzzed: ``Settings.from_env`` over arbitrary values of
every variable it reads, and ``open_store`` over arbitrary store URLs.

Whatever the input, the answer is settings (or a store) or a
:class:`ConfigurationError` naming the setting; never another exception, and
no file or folder made anywhere but where the URL says.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from jobtrack.api.config import ApiConfig
from jobtrack.api.security import TokenGuard
from jobtrack.errors import ConfigurationError, InvalidRequest
from jobtrack.model import utc_now
from jobtrack.runtime import Settings
from jobtrack.store import JobStore, open_store, sqlite_path
from tests.fuzz.strategies import any_text, fuzz_settings

STORE = "JOBTRACK_STORE_URL / --store"
DATA_DIR = "JOBTRACK_DATA_DIR / --data-dir"
NUMBERS = [
    "JOBTRACK_FLUSH_INTERVAL_MS",
    "JOBTRACK_WORKERS",
    "JOBTRACK_STUCK_AFTER",
    "JOBTRACK_MONITOR_INTERVAL",
    "JOBTRACK_LEDGER_RETENTION",
]
CHOICES = ["JOBTRACK_CONSUMER_PROGRESS", "JOBTRACK_PROGRESS_WRITES"]
FOLDERS = ["JOBTRACK_DATA_DIR", "XDG_DATA_HOME"]
URLS = ["JOBTRACK_STORE_URL", "JOBTRACK_BROKER_URL"]

numbers = st.one_of(
    st.integers().map(str),
    st.sampled_from(["", " 7 ", "1_000", "٣", "1e3", "0x10", "9" * 30, "9" * 5000, "-0"]),
    any_text,
)
folders = st.one_of(
    any_text,
    st.sampled_from(["~", "~nobody-here/x", "~/x", "a?b", "a#b", "/", ".", "..", "a\x00b"]),
    st.text(st.sampled_from("ab/.~?#%\x00"), max_size=12),
)
environments = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(NUMBERS, numbers),
        **dict.fromkeys(CHOICES, any_text | st.sampled_from(["on", "off", "per-item", "YES"])),
        **dict.fromkeys(FOLDERS, folders),
        **dict.fromkeys(URLS, any_text),
    },
)


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[Path]:
    """Work in ``folder``, six levels down, so no relative path of the
    fuzz's leaves the temporary folder."""
    deep = folder.joinpath(*"abcdef")
    deep.mkdir(parents=True)
    before = Path.cwd()
    os.chdir(deep)
    try:
        yield deep
    finally:
        os.chdir(before)


def tree(folder: Path) -> set[str]:
    found: set[str] = set()
    for parent, dirs, files in os.walk(folder):
        found.update(os.path.join(parent, name) for name in (*dirs, *files))
    return found


@fuzz_settings(max_examples=250)
@given(env=environments)
@example(env={"JOBTRACK_DATA_DIR": "~nobody-here/x"})  # RuntimeError
@example(env={"JOBTRACK_DATA_DIR": "a\x00b"})  # ValueError
@example(env={"XDG_DATA_HOME": "a\x00b"})
@example(env={"JOBTRACK_DATA_DIR": "a\ud800b"})
@example(env={"JOBTRACK_FLUSH_INTERVAL_MS": "9" * 400})  # OverflowError
@example(env={"JOBTRACK_LEDGER_RETENTION": "9" * 7})  # accepted; the monitor's cutoff overflowed
@example(env={"JOBTRACK_STUCK_AFTER": "9" * 30})
@example(env={"JOBTRACK_DATA_DIR": "a?b"})  # accepted; its default store URL was refused
@example(env={"JOBTRACK_WORKERS": "9" * 5000})
def test_settings_from_any_environment_or_a_configuration_error(env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as scratch, inside(Path(scratch)):
        env = {"JOBTRACK_DATA_DIR": "data"} | env if "XDG_DATA_HOME" not in env else env
        before = tree(Path(scratch))
        refused: ConfigurationError | None = None
        try:
            settings = Settings.from_env(env)
        except ConfigurationError as exc:
            refused = exc
        assert tree(Path(scratch)) == before  # reading settings makes nothing
    if refused is not None:
        assert refused.setting in {*NUMBERS, *CHOICES, DATA_DIR, "XDG_DATA_HOME", "HOME"}
        assert str(refused).endswith(f"(check {refused.setting})")
        assert len(str(refused)) < 600
        return
    assert settings.data_dir.is_absolute()
    assert settings.workers >= 1
    assert 0 < settings.flush_interval <= 3600
    now = utc_now()
    assert now - timedelta(seconds=settings.stuck_after) < now
    assert now - timedelta(seconds=settings.monitor_interval) < now
    assert now - timedelta(days=settings.ledger_retention) < now
    if not env.get("JOBTRACK_STORE_URL"):
        assert sqlite_path(settings.store_url) == str(settings.data_dir / "jobtrack.db")


def test_a_data_folder_with_a_question_mark_cannot_hold_the_default_store() -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"JOBTRACK_DATA_DIR": "/srv/what?/jobs"})
    assert refused.value.setting == DATA_DIR
    given = Settings.from_env(
        {"JOBTRACK_DATA_DIR": "/srv/what?", "JOBTRACK_STORE_URL": "memory://"}
    )
    assert given.data_dir == Path("/srv/what?")


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("JOBTRACK_FLUSH_INTERVAL_MS", "9" * 400, "must be at most 3,600,000"),
        ("JOBTRACK_LEDGER_RETENTION", "36501", "must be at most 36,500, not '36501'"),
        ("JOBTRACK_WORKERS", "9" * 5000, "must be a whole number, not '99999"),
        ("JOBTRACK_DATA_DIR", "~nobody-here/x", "the data folder '~nobody-here/x' cannot be used"),
        ("JOBTRACK_DATA_DIR", "a\x00b", "the data folder 'a\\x00b' cannot be used"),
    ],
)
def test_a_setting_that_raised_another_error_names_itself(
    variable: str, raw: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"JOBTRACK_DATA_DIR": "/srv/jobtrack", variable: raw})
    assert refused.value.setting == (DATA_DIR if variable == "JOBTRACK_DATA_DIR" else variable)
    assert message in str(refused.value)
    assert len(str(refused.value)) < 300


# -- store URLs -----------------------------------------------------------------

components = st.one_of(
    st.sampled_from(["..", ".", "", "db", "x.db", ":memory:", "a?b", "a#b", "%41", "-wal", " "]),
    st.text(st.sampled_from("ab.\x00é\ud800\udc80:%"), min_size=1, max_size=6),
    st.text(st.sampled_from("ab"), min_size=250, max_size=300),  # past a name's 255 bytes
)
relative_paths = st.lists(components, min_size=1, max_size=5).map("/".join)
store_urls = st.one_of(
    any_text,
    relative_paths.map(lambda path: f"sqlite:///{path}"),
    st.sampled_from(["sqlite://", "sqlite:", "sqlite:////", "SQLITE:///x.db", "memory:// "]),
    any_text.map(lambda rest: f"postgresql://{rest}"),
    st.sampled_from(["postgresql://u:pw@h", "postgres://h", "postgresql://"]).flatmap(
        lambda base: st.tuples(st.just(base), any_text).map("".join)
    ),
    st.sampled_from(
        [
            "postgresql://h:0/d",
            "postgresql://h:65536/d",
            "postgresql://h/d?sslmode=maybe",
            "postgresql://h/d?nosuch=1",
            "postgresql://[::1/d",
            "postgresql://h/d?port=\udc80",
            "postgresql://h\x00/d",
        ]
    ),
)


def expected_paths(url: str, cwd: Path) -> set[str]:
    """What opening a SQLite URL may make: each folder its path names, as
    written, and the database with its journal files."""
    path = url.removeprefix("sqlite:///")
    parts = path.split("/")
    made = {os.path.abspath(os.path.join(cwd, *parts[: n + 1])) for n in range(len(parts))}
    database = os.path.abspath(os.path.join(cwd, path))
    return made | {database + suffix for suffix in ("-wal", "-shm", "-journal")}


async def closed(store: JobStore) -> None:
    await store.aclose()


async def opened(url: str) -> JobStore:
    return open_store(url)  # in a loop: the PostgreSQL pool is made on one


@fuzz_settings(max_examples=250)
@given(url=store_urls)
@example(url="sqlite:///a\x00b.db")  # ValueError
@example(url="postgresql://h/d?port=\udc80")  # UnicodeEncodeError
@example(url="postgresql://h\x00/d")  # opened: libpq reads up to the NUL, another server
@example(url="postgresql://h:%C2%B2/d")  # ValueError: '²'.isdigit(), int('²') is not
@example(url="postgresql://h/d?port=" + "9" * 5000)  # ValueError: past int()'s digits
@example(url="sqlite:///.")  # StoreUnavailable: an outage, waited for
@example(url="sqlite:///" + "a" * 300 + ".db")
@example(url="sqlite:///x.db/x.db")
@example(url="sqlite:///a/../b.db")
@example(url="sqlite:///:memory:")
def test_a_store_url_opens_or_is_a_configuration_error(url: str) -> None:
    with tempfile.TemporaryDirectory() as scratch, inside(Path(scratch)) as cwd:
        Path("x.db").write_text("not a database")
        before = tree(Path(scratch))
        refused: ConfigurationError | None = None
        try:
            store = asyncio.run(opened(url))
        except ConfigurationError as exc:
            refused = exc
        else:
            asyncio.run(closed(store))
        made = tree(Path(scratch)) - before
    if url.startswith("sqlite:") and url != "sqlite:///:memory:":
        assert made <= expected_paths(url, cwd)
        if refused is None:
            assert os.path.abspath(os.path.join(cwd, sqlite_path(url))) in made | before
    else:
        assert made == set()
    if refused is not None:
        assert refused.setting == STORE
        assert str(refused).endswith(f"(check {STORE})")
        assert "\x00" not in str(refused)
        assert len(str(refused)) < 600


# -- the server's own settings -----------------------------------------------


@fuzz_settings(max_examples=200)
@given(
    host=any_text | st.sampled_from(["127.0.0.1", "::1", "localhost", "0.0.0.0", "::1%lo"]),
    token=st.none() | any_text,
    roots=st.none() | any_text,
)
@example(host="127.0.0.1", token="t\udcff", roots=None)  # UnicodeEncodeError in TokenGuard
@example(host="127.0.0.1", token="t\x00", roots=None)
@example(host="0.0.0.0", token=None, roots=None)
@example(host="127.0.0.1", token=None, roots="r" * 300)  # OSError: a name too long
def test_the_servers_settings_or_a_refusal(host: str, token: str | None, roots: str | None) -> None:
    env = {
        name: value
        for name, value in (("JOBTRACK_API_TOKEN", token), ("JOBTRACK_SCAN_ROOTS", roots))
        if value is not None
    }
    refused: InvalidRequest | None = None
    try:
        config = ApiConfig.for_bind(host, env=env)
    except InvalidRequest as exc:
        refused = exc
    if refused is not None:
        assert str(refused)
        return
    guard = TokenGuard(_nothing, token=config.token, reads_need_token=config.reads_need_token)
    assert guard is not None
    assert config.token is None or config.token == config.token.strip() != ""


async def _nothing(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app that answers nothing."""


def test_a_token_no_header_can_carry_is_refused_naming_it() -> None:
    with pytest.raises(ConfigurationError) as refused:
        ApiConfig.for_bind("127.0.0.1", env={"JOBTRACK_API_TOKEN": "t\udcff"})
    assert refused.value.setting == "JOBTRACK_API_TOKEN"
    assert str(refused.value) == (
        "JOBTRACK_API_TOKEN must be valid Unicode, not a lone surrogate (check JOBTRACK_API_TOKEN)"
    )
