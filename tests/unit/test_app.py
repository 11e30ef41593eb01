"""The composition root: parts built from settings on first use, closed in
order (tracker, broker, catalog, store), each whatever the others do, once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import pytest

from jobtrack.broker import InMemoryBroker
from jobtrack.errors import InvalidRequest, StoreError, StoreMissing
from jobtrack.pipeline.catalog import InMemoryCatalog, SqliteCatalog, catalog_for
from jobtrack.pipeline.stages import DEFAULT_RENDITIONS
from jobtrack.runtime import App, Settings
from jobtrack.runtime import app as app_module
from jobtrack.store import InMemoryJobStore, JobStore, SqliteJobStore


def memory_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", store_url="memory://", **overrides)


class ClosingCatalog(InMemoryCatalog):
    """A catalog with something of its own to close."""

    def __init__(self, closed: list[str]) -> None:
        super().__init__()
        self._closed = closed

    async def aclose(self) -> None:
        self._closed.append("catalog")


def record_closing(
    app: App,
    monkeypatch: pytest.MonkeyPatch,
    closed: list[str],
    *,
    failing: frozenset[str] = frozenset(),
) -> None:
    """Build every part of ``app`` and note, in ``closed``, each part closed."""
    monkeypatch.setattr(app_module, "catalog_for", lambda store: ClosingCatalog(closed))

    def noting(part: str, close: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            closed.append(part)
            result = await close(*args, **kwargs)
            if part in failing:
                raise StoreError(f"{part} failed to close")
            return result

        return wrapper

    tracker, broker, store = app.tracker, app.broker, app.store
    assert isinstance(app.catalog, ClosingCatalog)
    monkeypatch.setattr(tracker, "flush", noting("tracker", tracker.flush))
    monkeypatch.setattr(broker, "aclose", noting("broker", broker.aclose))
    monkeypatch.setattr(store, "aclose", noting("store", store.aclose))


async def test_parts_are_built_from_the_settings_on_first_use(tmp_path: Path) -> None:
    settings = memory_settings(tmp_path, consumer_progress=False, coalesce=False)
    async with App(settings) as app:
        assert app.settings is settings
        assert app.renditions == DEFAULT_RENDITIONS
        store = app.store
        assert isinstance(store, InMemoryJobStore)
        assert app.store is store  # built once
        assert isinstance(app.catalog, InMemoryCatalog)
        assert isinstance(app.broker, InMemoryBroker)
        assert app.tracker.enabled is False
        assert app.tracker.coalesce is False
        assert app.shared_broker is False


async def test_a_monitor_needs_no_tracker_nor_an_in_process_broker(tmp_path: Path) -> None:
    async with App(memory_settings(tmp_path, stuck_after=42.0)) as app:
        monitor = app.monitor(max_redrives=5, mode="centralized")
        assert monitor.stuck_after == 42.0
        assert monitor.max_redrives == 5
        assert monitor.mode == "centralized"
        assert monitor.concurrency == 1
        assert app.monitor(stuck_after=7.0).stuck_after == 7.0
        assert app.monitor(concurrency=8).concurrency == 8
        # Another process's in-process broker is out of reach: nothing to re-drive into.
        assert app.reconciler.can_redrive is False
        assert app._tracker is None
        assert app._broker is None


async def test_a_shared_broker_lets_the_reconciler_redrive(tmp_path: Path) -> None:
    settings = memory_settings(tmp_path, broker_url="amqp://guest:guest@127.0.0.1:1/")
    async with App(settings) as app:
        assert app.shared_broker is True
        assert app.reconciler.can_redrive is True  # the broker connects on first use only


async def test_closing_goes_tracker_broker_catalog_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    async with App(memory_settings(tmp_path)) as app:
        record_closing(app, monkeypatch, closed)
    assert closed == ["tracker", "broker", "catalog", "store"]


async def test_a_part_that_fails_to_close_does_not_keep_the_others_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    app = App(memory_settings(tmp_path))
    record_closing(app, monkeypatch, closed, failing=frozenset({"tracker", "broker"}))
    with pytest.raises(StoreError, match=r"^tracker failed to close$"):
        await app.aclose()  # the first failure, once everything is closed
    assert closed == ["tracker", "broker", "catalog", "store"]


async def test_closing_twice_closes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []
    app = App(memory_settings(tmp_path))
    record_closing(app, monkeypatch, closed)
    await app.aclose()
    await app.aclose()
    assert closed == ["tracker", "broker", "catalog", "store"]


async def test_only_the_parts_built_are_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with App(memory_settings(tmp_path)) as app:
        store = app.store
        closed: list[str] = []

        async def aclose() -> None:
            closed.append("store")

        monkeypatch.setattr(store, "aclose", aclose)
    assert closed == ["store"]
    assert (tmp_path / "data").exists() is False  # nothing asked for the data folder


async def test_a_closed_app_builds_nothing_until_entered_again(tmp_path: Path) -> None:
    app = App(memory_settings(tmp_path))
    async with app:
        first = app.store
    with pytest.raises(InvalidRequest, match="the app is closed"):
        _ = app.store
    with pytest.raises(InvalidRequest, match="the app is closed"):
        _ = app.tracker
    async with app:
        assert app.store is not first


async def test_the_sqlite_store_and_its_catalog_share_one_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'jobs.db'}")
    async with App(settings) as app:
        store = app.store
        assert isinstance(store, SqliteJobStore)
        assert isinstance(app.catalog, SqliteCatalog)
        await store.create_job("t", ["a"])
    with pytest.raises(StoreError, match="is closed"):
        await store.list_jobs()


def test_the_data_folder_is_made_on_demand(tmp_path: Path) -> None:
    app = App(memory_settings(tmp_path))
    assert app.ensure_data_dir() == tmp_path / "data"
    assert (tmp_path / "data").is_dir()
    (tmp_path / "file").write_text("x")
    blocked = App(Settings(data_dir=tmp_path / "file" / "data", store_url="memory://"))
    with pytest.raises(StoreError, match=r"^cannot use .*/file/data: Not a directory$"):
        blocked.ensure_data_dir()


async def test_preflight_of_in_process_parts_connects_to_nothing(tmp_path: Path) -> None:
    app = App(memory_settings(tmp_path))
    await app.preflight()
    assert (app._store, app._broker) == (None, None)


class Renamed(InMemoryJobStore):
    """An in-memory store by another class name: the backend name decides."""


class Unknown(InMemoryJobStore):
    backend: ClassVar[str] = "cassandra"


class Pretending(InMemoryJobStore):
    backend: ClassVar[str] = "sqlite"


def test_the_catalog_is_picked_by_the_store_backend_name() -> None:
    assert isinstance(catalog_for(Renamed()), InMemoryCatalog)
    with pytest.raises(
        InvalidRequest,
        match=r"^no catalog for the store backend 'cassandra' \(Unknown\): the backends are"
        r" memory, sqlite, postgres$",
    ):
        catalog_for(Unknown())
    with pytest.raises(InvalidRequest, match=r"^no catalog for the store backend None \(object\)"):
        catalog_for(object())  # type: ignore[arg-type]  # a wrapper that names no backend
    store: JobStore = Pretending()
    with pytest.raises(InvalidRequest, match=r"^a Pretending is not a SQLite store$"):
        catalog_for(store)


async def test_an_app_that_may_not_create_its_store_finds_none(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    async with App(Settings(data_dir=tmp_path, store_url=url), create_store=False) as app:
        with pytest.raises(StoreMissing, match=r"^no database at .*/none\.db$"):
            _ = app.store
    assert (tmp_path / "none.db").exists() is False


async def test_the_body_error_wins_over_a_close_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    closed: list[str] = []
    app = App(memory_settings(tmp_path))

    async def body() -> None:
        async with app:
            record_closing(app, monkeypatch, closed, failing=frozenset({"store"}))
            raise KeyError("the body's own")

    with pytest.raises(KeyError, match="the body's own"):
        await body()
    assert closed == ["tracker", "broker", "catalog", "store"]
    assert [r.getMessage() for r in caplog.records if r.name == app_module.__name__] == [
        "closing the app failed after an error: StoreError('store failed to close')"
    ]


async def test_a_cancelled_body_stays_cancelled_when_a_part_fails_to_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    app = App(memory_settings(tmp_path))
    started = asyncio.Event()

    async def body() -> None:
        async with app:
            record_closing(app, monkeypatch, closed, failing=frozenset({"store"}))
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == ["tracker", "broker", "catalog", "store"]


async def test_an_open_app_cannot_be_entered_again(tmp_path: Path) -> None:
    app = App(memory_settings(tmp_path))
    async with app:
        store = app.store
        with pytest.raises(InvalidRequest, match=r"^the app is already open"):
            async with app:
                pass
        assert app.store is store  # the refused entry closed nothing


async def test_a_second_close_waits_for_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = App(memory_settings(tmp_path))
    tracker = app.tracker
    release = asyncio.Event()
    done: list[str] = []

    async def slow_flush(**_: Any) -> None:
        await release.wait()
        done.append("flushed")

    monkeypatch.setattr(tracker, "flush", slow_flush)
    first = asyncio.create_task(app.aclose())
    await asyncio.sleep(0)
    second = asyncio.create_task(app.aclose())
    await asyncio.sleep(0.05)
    assert second.done() is False  # waiting for the flush under way, not returned at once
    release.set()
    await asyncio.gather(first, second)
    assert done == ["flushed"]
