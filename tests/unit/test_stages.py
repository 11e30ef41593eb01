"""Where renditions are written: inside the renditions folder, whatever the ids."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from jobtrack.cli.views import print_job
from jobtrack.errors import PathRefused
from jobtrack.pipeline.stages import (
    STAGES,
    THUMBNAIL,
    RenditionSpec,
    inside_renditions,
    renditions_dir,
)
from jobtrack.runtime import Settings
from jobtrack.runtime.builtin import builtin_app
from jobtrack.store import InMemoryJobStore

SPEC = RenditionSpec(THUMBNAIL, 300)
BAD_IDS = [
    "../../../../etc/x",
    "..",
    ".",
    "",
    "a/b",
    "a\\b",
    "/etc/passwd",
    "a\x00b",
    ".hidden",
    "x" * 129,
    "é",
]


def test_a_rendition_lies_in_the_renditions_folder(tmp_path: Path) -> None:
    path = SPEC.output_path(tmp_path, "0123abcd", "d84542eec42a78014e13c27d")
    assert (
        path == tmp_path / "renditions" / "0123abcd" / "thumbnail" / "d84542eec42a78014e13c27d.jpg"
    )
    assert renditions_dir(tmp_path) == tmp_path / "renditions"


@pytest.mark.parametrize("bad", BAD_IDS)
def test_an_image_id_that_is_not_a_plain_name_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PathRefused) as refused:
        SPEC.output_path(tmp_path, "0123abcd", bad)
    assert str(refused.value) == f"image id {bad[:40]!r} cannot name a rendition"


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_collection_id_that_is_not_a_plain_name_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PathRefused) as refused:
        SPEC.output_path(tmp_path, bad, "d84542eec42a78014e13c27d")
    assert str(refused.value) == f"collection id {bad[:40]!r} cannot name a rendition"


async def test_a_job_whose_collection_id_names_no_folder_is_still_shown(tmp_path: Path) -> None:
    store = InMemoryJobStore()
    job = await store.create_job(
        "collection-scan", STAGES, attributes={"collection": {"id": "../../x", "path": "/p"}}
    )
    console = Console(record=True, width=200)
    app = builtin_app(Settings.from_env({}, data_dir=tmp_path, store_url="memory://"))
    print_job(console, job, [], details=app.get_type(job.job_type).details(app, job))
    text = console.export_text()
    assert (
        f"thumbnail renditions: none (collection id {'../../x'!r} cannot name a rendition)" in text
    )
    assert str(tmp_path) not in text


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("renditions/c/thumbnail/i.jpg", True),
        ("renditions", False),  # the folder itself
        ("renditions2/c/i.jpg", False),  # a sibling that shares the prefix
        ("renditions/../victim.txt", False),
        ("renditions/c/../../../victim.txt", False),
        ("../elsewhere/renditions/i.jpg", False),
    ],
)
def test_inside_renditions(tmp_path: Path, path: str, inside: bool) -> None:
    data = tmp_path / "data"
    assert inside_renditions(data / path, data) is inside
    assert inside_renditions(str(data / path), data) is inside
