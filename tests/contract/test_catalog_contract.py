"""The catalog contract: the same bodies against every catalog backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobtrack.errors import CollectionNotFound, NotFound
from jobtrack.pipeline.catalog import (
    Artifact,
    ArtifactStatus,
    Catalog,
    ScannedFile,
    catalog_for,
    image_id_for,
)
from jobtrack.store import JobStore
from tests.conftest import SteppingClock
from tests.contract.conftest import BACKENDS, make_store

WHEN = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
async def catalog(
    request: pytest.FixtureRequest, tmp_path: Path, clock: SteppingClock
) -> AsyncIterator[Catalog]:
    store: JobStore = make_store(request.param, tmp_path, clock, request)
    yield catalog_for(store)
    await store.aclose()


def artifact(image_id: str, kind: str, status: ArtifactStatus, size: int = 10) -> Artifact:
    return Artifact(
        image_id=image_id,
        kind=kind,
        status=status,
        variant="300px-q85",
        source_size=size,
        source_mtime_ns=1,
        produced_at=WHEN,
        path=f"/r/{image_id}.jpg" if status is ArtifactStatus.OK else None,
        error=None if status is ArtifactStatus.OK else "broken",
        width=300 if status is ArtifactStatus.OK else None,
        height=200 if status is ArtifactStatus.OK else None,
    )


async def test_collections_are_known_by_root_and_swap_jobs(catalog: Catalog) -> None:
    first = await catalog.ensure_collection("/photos")
    assert await catalog.ensure_collection("/photos") == first
    assert await catalog.get_collection(first.id) == first
    assert first.job_id is None
    assert await catalog.swap_job(first.id, expected=None, job_id="j1")
    assert not await catalog.swap_job(first.id, expected=None, job_id="j2")
    assert await catalog.swap_job(first.id, expected="j1", job_id="j2")
    assert (await catalog.get_collection(first.id)).job_id == "j2"
    with pytest.raises(CollectionNotFound):
        await catalog.get_collection("nope")


async def test_images_and_their_artifacts(catalog: Catalog) -> None:
    collection = await catalog.ensure_collection("/photos")
    files = [ScannedFile("b.jpg", 10, 1), ScannedFile("a.jpg", 20, 2)]
    states = await catalog.register_images(collection.id, "j1", files)
    assert [s.image.relpath for s in states] == ["b.jpg", "a.jpg"]  # in the order given
    b, a = (s.image.id for s in states)
    assert b == image_id_for(collection.id, "b.jpg")
    await catalog.record_artifact(artifact(b, "thumbnail", ArtifactStatus.OK))
    await catalog.record_artifact(artifact(a, "thumbnail", ArtifactStatus.FAILED, size=20))
    await catalog.record_artifact(artifact(b, "thumbnail", ArtifactStatus.FAILED))  # replaces
    seen = await catalog.images_of_job(collection.id, "j1")
    assert [s.image.relpath for s in seen] == ["a.jpg", "b.jpg"]
    assert seen[1].artifacts["thumbnail"] == artifact(b, "thumbnail", ArtifactStatus.FAILED)
    assert (await catalog.get_image(a)).size == 20
    with pytest.raises(NotFound):
        await catalog.get_image("nope")


async def test_a_rescan_updates_versions_and_retires_what_is_gone(catalog: Catalog) -> None:
    collection = await catalog.ensure_collection("/photos")
    first = await catalog.register_images(
        collection.id, "j1", [ScannedFile("a.jpg", 10, 1), ScannedFile("b.jpg", 10, 1)]
    )
    for state in first:
        await catalog.record_artifact(artifact(state.image.id, "thumbnail", ArtifactStatus.OK))
    [again] = await catalog.register_images(collection.id, "j2", [ScannedFile("a.jpg", 11, 5)])
    assert (again.image.size, again.image.mtime_ns, again.image.job_id) == (11, 5, "j2")
    assert again.current("thumbnail", "300px-q85") is None  # made from the old version
    gone = await catalog.retire_unseen(collection.id, "j2")
    assert gone == [f"/r/{first[1].image.id}.jpg"]
    assert not (await catalog.get_image(first[1].image.id)).present
    assert [s.image.relpath for s in await catalog.images_of_job(collection.id, "j2")] == ["a.jpg"]
    assert await catalog.retire_unseen(collection.id, "j2") == []


CATALOG_OF = {"memory": "InMemoryCatalog", "sqlite": "SqliteCatalog", "postgres": "PostgresCatalog"}


async def test_the_store_names_its_backend_and_the_catalog_that_goes_with_it(
    store: JobStore, request: pytest.FixtureRequest
) -> None:
    backend = request.node.callspec.params["store"]
    assert store.backend == backend
    assert type(store).backend == backend  # a class variable: known before any instance
    assert type(catalog_for(store)).__name__ == CATALOG_OF[backend]
