"""Whole collections through the real command line, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

JOBTRACK = [sys.executable, "-m", "jobtrack"]
STAGES = ("scan", "thumbnail", "cache")
# Every suffix the sample writes for an image file, broken ones included.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif"}


def run(
    *args: str | Path, data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "JOBTRACK_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    for name in ("JOBTRACK_STORE_URL", "JOBTRACK_BROKER_URL", "JOBTRACK_WORKERS"):
        full_env.pop(name, None)
    full_env.update(env or {})
    done = subprocess.run(
        [*JOBTRACK, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
        check=False,
    )
    assert "Traceback" not in done.stderr
    return done


def counts(stage: dict[str, Any]) -> tuple[int, int, int, bool]:
    return (
        stage["total_items"],
        stage["completed_items"],
        stage["failed_items"],
        stage["total_final"],
    )


def undecodable(root: Path) -> list[str]:
    """The image files under ``root`` that Pillow cannot decode, as relative paths."""
    broken = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, SyntaxError, ValueError):
            broken.append(path.relative_to(root).as_posix())
    return broken


def longest_edges(folder: Path) -> list[int]:
    """The longest edge of every rendition in ``folder``, which must all be JPEGs."""
    edges = []
    for path in sorted(folder.iterdir()):
        with Image.open(path) as image:
            assert image.format == "JPEG", path
            edges.append(max(image.size))
    return edges


@pytest.mark.slow
def test_the_demo_collection_ends_exact(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    data_dir = tmp_path / "state"
    sampled = run("sample", root, data_dir=data_dir)
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.strip() == f"wrote 198 images, 2 broken files and 2 other files to {root}"
    broken = undecodable(root)
    assert len(broken) == 2

    done = run("scan", root, "--json", data_dir=data_dir)
    assert done.returncode == 0, done.stderr
    job: dict[str, Any] = json.loads(done.stdout)
    assert job["status"] == "completed"
    stages = job["stages"]
    assert list(stages) == list(STAGES)
    for name in STAGES:
        total, completed, failed, final = counts(stages[name])
        assert final is True, name
        assert completed + failed == total == 200, name
        assert stages[name]["status"] == "completed", name
    assert stages["scan"]["failed_items"] == 0
    for name in ("thumbnail", "cache"):
        assert counts(stages[name]) == (200, 198, 2, True), name
    assert sorted(failure["image"] for failure in job["failures"]) == broken
    assert [failure["stages"] for failure in job["failures"]] == [["cache", "thumbnail"]] * 2

    renditions = data_dir / "renditions" / job["collection"]["id"]
    assert sorted(p.name for p in renditions.iterdir()) == ["cache", "thumbnail"]
    for name, max_edge in (("thumbnail", 300), ("cache", 1920)):
        folder = renditions / name
        assert len(list(folder.glob("*.jpg"))) == 198, name
        assert len(list(folder.iterdir())) == 198, name  # nothing else left behind
        edges = longest_edges(folder)
        assert [edge for edge in edges if edge > max_edge] == [], name
        # The biggest pictures (4000x3000, and its portrait twin) are scaled to the bound.
        assert max(edges) == max_edge, name


def test_hostile_paths_are_refused_without_losing_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    sibling = tmp_path / "photos-old"  # shares the root's name as a prefix
    elsewhere = tmp_path / "elsewhere"
    data_dir = tmp_path / "state"
    for folder in (root, sibling, elsewhere):
        folder.mkdir()
    for name, colour in (("a.jpg", "teal"), ("b.jpg", "orange"), ("c.png", "navy")):
        Image.new("RGB", (64, 48), colour).save(root / name)
    Image.new("RGB", (64, 48), "red").save(sibling / "old.jpg")
    Image.new("RGB", (64, 48), "red").save(elsewhere / "secret.jpg")
    (root / "escape.jpg").symlink_to(elsewhere / "secret.jpg")  # refused: outside
    (root / "old").symlink_to(Path("..") / "photos-old")  # refused: a sibling, not inside
    (root / "loop").symlink_to(".")  # an alias of the root: skipped
    (root / "self").symlink_to("self")  # cannot be resolved: refused

    done = run("scan", root, "--json", data_dir=data_dir)
    assert done.returncode == 0, done.stderr
    job: dict[str, Any] = json.loads(done.stdout)
    assert job["status"] == "completed"
    stages = job["stages"]
    assert counts(stages["scan"]) == (3, 3, 0, True)
    assert counts(stages["thumbnail"]) == (3, 3, 0, True)
    assert counts(stages["cache"]) == (3, 3, 0, True)
    assert stages["scan"]["message"] == (
        "3 images (0 up to date), 1 other entry skipped, 3 paths refused"
    )
    assert job["failures"] == []
    thumbnails = data_dir / "renditions" / job["collection"]["id"] / "thumbnail"
    assert len(list(thumbnails.glob("*.jpg"))) == 3

    assert "refused escape.jpg: resolves outside the collection root" in done.stderr
    assert "refused old: resolves outside the collection root" in done.stderr
    assert "refused self: cannot be resolved (" in done.stderr
    assert done.stderr.count("refused ") == 3
    assert "refused loop" not in done.stderr


def test_unusable_settings_are_usage_errors(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (64, 48), "teal").save(root / "a.jpg")
    data_dir = tmp_path / "state"

    bogus = run("scan", root, "--store", "bogus://x", data_dir=data_dir)
    assert bogus.returncode == 2
    assert "unsupported store URL 'bogus://x'" in bogus.stderr

    no_workers = run("scan", root, data_dir=data_dir, env={"JOBTRACK_WORKERS": "0"})
    assert no_workers.returncode == 2
    assert "Invalid value for '--workers' (env var: 'JOBTRACK_WORKERS')" in no_workers.stderr

    empty = run("jobs", "list", "--store", "sqlite:///", data_dir=data_dir)
    assert empty.returncode == 2
    assert "not a SQLite URL: 'sqlite:///'" in empty.stderr

    for done in (bogus, no_workers, empty):
        assert done.stdout == ""
    # A store URL that can never work is one line naming its setting; a
    # flag Click refuses is a usage error.
    for done in (bogus, empty):
        assert "(check JOBTRACK_STORE_URL / --store)" in done.stderr
        assert "Usage: jobtrack " not in done.stderr
    assert "Usage: jobtrack " in no_workers.stderr
