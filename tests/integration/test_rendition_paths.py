"""Ids never decide a path outside the renditions folder, whatever the
catalog holds: the embedded runtime on real SQLite and real files."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import cast

from PIL import Image

from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.pipeline.catalog import ArtifactStatus, SqliteCatalog
from jobtrack.pipeline.stages import CACHE, STAGES, THUMBNAIL, queue_for
from jobtrack.runtime import EmbeddedRuntime, Settings

CLIMBER = "../../../../outside/x"


def settings_for(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, store_url=f"sqlite:///{data_dir / 'jobtrack.db'}", workers=1)


def photos(root: Path, count: int = 2) -> Path:
    root.mkdir(parents=True)
    for index in range(count):
        Image.new("RGB", (64, 48), (index * 90, 10, 10)).save(root / f"{index}.jpg")
    return root


def files_outside(base: Path, *inside: Path) -> list[Path]:
    return sorted(
        path
        for path in base.rglob("*")
        if path.is_file() and not any(path.is_relative_to(folder) for folder in inside)
    )


async def test_an_image_id_that_climbs_out_is_a_failed_item_and_nothing_is_written_outside(
    tmp_path: Path,
) -> None:
    root = photos(tmp_path / "photos")
    data = tmp_path / "state"
    async with EmbeddedRuntime(settings_for(data)) as runtime:
        first = await runtime.scan(root)
        collection_id = first.job.attributes["collection"]["id"]
        shutil.copy(root / "0.jpg", root / "copy.jpg")
        catalog = cast(SqliteCatalog, runtime.catalog)
        job = await runtime.store.create_job("collection-scan", STAGES)
        await runtime.store.raise_total(job.id, THUMBNAIL, by=1)
        await runtime.store.seal_total(job.id, THUMBNAIL)
        with catalog.database.write() as conn:  # a row no scan would write
            conn.execute(
                "INSERT INTO images (id, collection_id, relpath, size, mtime_ns, job_id)"
                " VALUES (?, ?, 'copy.jpg', 1, 1, ?)",
                (CLIMBER, collection_id, job.id),
            )
        message = ItemMessage(job.id, "collection-scan", THUMBNAIL, CLIMBER)
        await runtime.broker.publish(queue_for(THUMBNAIL), encode_item(message))
        await runtime.wait_settled()
        [state] = await catalog.images_of_job(collection_id, job.id)
        after = await runtime.store.get_job(job.id)
    assert files_outside(tmp_path, root, data) == []
    assert not (tmp_path / "outside").exists()
    artifact = state.artifacts[THUMBNAIL]
    assert (artifact.status, artifact.path) == (ArtifactStatus.FAILED, None)
    assert artifact.error == f"image id {CLIMBER!r} cannot name a rendition"
    thumbnail = after.stage(THUMBNAIL)
    assert (thumbnail.completed_items, thumbnail.failed_items) == (0, 1)


async def test_retired_artifacts_are_deleted_only_inside_the_renditions_folder(
    tmp_path: Path,
) -> None:
    root = photos(tmp_path / "photos")
    data = tmp_path / "state"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    async with EmbeddedRuntime(settings_for(data)) as runtime:
        first = await runtime.scan(root)
        catalog = cast(SqliteCatalog, runtime.catalog)
        collection_id = first.job.attributes["collection"]["id"]
        [zero, _] = await catalog.images_of_job(collection_id, first.job.id)
        cache = Path(str(zero.artifacts[CACHE].path))
        with catalog.database.write() as conn:  # a path no consumer would record
            conn.execute(
                "UPDATE artifacts SET path = ? WHERE image_id = ? AND kind = ?",
                (str(victim), zero.image.id, THUMBNAIL),
            )
        (root / zero.image.relpath).unlink()
        again = await runtime.scan(root)
    assert victim.read_text() == "precious"
    assert not await asyncio.to_thread(cache.exists)  # the rendition inside was deleted
    assert again.report is not None
    assert again.report.removed == 1
