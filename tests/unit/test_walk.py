"""Walking a collection: containment on resolved paths, loops, non-images."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from jobtrack.errors import PathRefused
from jobtrack.pipeline.catalog import ScannedFile
from jobtrack.pipeline.walk import (
    Refused,
    ResolvedRoot,
    Skipped,
    open_inside,
    resolve_inside,
    resolve_root,
    walk_images,
)


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    touch(root / "a.jpg")
    touch(root / "sub" / "b.PNG")
    touch(root / "sub" / "notes.txt")
    touch(root / ".hidden.jpg")
    touch(tmp_path / "outside.jpg")
    touch(tmp_path / "photos-old" / "c.jpg")  # a sibling sharing the root's prefix
    return root


def entries(root: Path) -> dict[str, object]:
    return {e.relpath: e for e in walk_images(resolve_root(root))}


def test_finds_images_and_skips_others(tree: Path) -> None:
    found = entries(tree)
    assert sorted(found) == [".hidden.jpg", "a.jpg", "sub/b.PNG", "sub/notes.txt"]
    assert isinstance(found["a.jpg"], ScannedFile)
    assert isinstance(found["sub/b.PNG"], ScannedFile)
    assert isinstance(found["sub/notes.txt"], Skipped)
    assert isinstance(found[".hidden.jpg"], Skipped)


def test_symlink_out_of_the_root_is_refused(tree: Path) -> None:
    (tree / "escape.jpg").symlink_to(tree.parent / "outside.jpg")
    (tree / "escape-dir").symlink_to(tree.parent)
    found = entries(tree)
    assert found["escape.jpg"] == Refused("escape.jpg", "resolves outside the collection root")
    assert found["escape-dir"] == Refused("escape-dir", "resolves outside the collection root")


def test_sibling_with_the_roots_prefix_is_refused(tree: Path) -> None:
    (tree / "old").symlink_to(tree.parent / "photos-old")
    found = entries(tree)
    assert found["old"] == Refused("old", "resolves outside the collection root")
    assert "old/c.jpg" not in found
    with pytest.raises(PathRefused, match="outside the collection root"):
        resolve_inside(tree, "../photos-old/c.jpg")


def test_dotdot_is_refused(tree: Path) -> None:
    with pytest.raises(PathRefused, match="outside the collection root"):
        resolve_inside(tree, "../outside.jpg")
    assert resolve_inside(tree, "sub/../a.jpg") == tree.resolve() / "a.jpg"


def test_symlink_loops_end(tree: Path) -> None:
    (tree / "sub" / "loop").symlink_to(tree)
    (tree / "self").symlink_to(tree / "self")
    found = entries(tree)
    assert found["self"] == Refused("self", "cannot be resolved (RuntimeError)")
    images = sorted(r for r, e in found.items() if isinstance(e, ScannedFile))
    assert images == ["a.jpg", "sub/b.PNG"]


def test_symlink_inside_the_root_is_an_alias(tree: Path) -> None:
    touch(tree / "other" / "d.jpg")
    (tree / "alias").symlink_to(tree / "other")
    (tree / "link.jpg").symlink_to(tree / "a.jpg")
    found = entries(tree)
    images = sorted(r for r, e in found.items() if isinstance(e, ScannedFile))
    # Each file once, under its own name, however many links lead to it.
    assert images == ["a.jpg", "other/d.jpg", "sub/b.PNG"]
    assert (found["alias"], found["link.jpg"]) == (Skipped("alias"), Skipped("link.jpg"))


def test_root_must_be_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(PathRefused, match="no such folder"):
        resolve_root(tmp_path / "missing")
    with pytest.raises(PathRefused, match="not a folder"):
        resolve_root(touch(tmp_path / "file.jpg"))


def test_hidden_folders_and_excluded_folders_are_skipped(tree: Path) -> None:
    touch(tree / ".cache" / "e.jpg")
    touch(tree / "state" / "renditions" / "f.jpg")
    found = {e.relpath: e for e in walk_images(resolve_root(tree), exclude=[tree / "state"])}
    assert found[".cache"] == Skipped(".cache")
    assert found["state"] == Skipped("state")
    assert not any(r.startswith((".cache/", "state/")) for r in found)


def test_names_that_are_not_utf8_are_refused(tree: Path) -> None:
    bad = os.fsdecode(b"bad\xff.jpg")
    touch(tree / bad)
    found = entries(tree)
    assert found["bad?.jpg"] == Refused("bad?.jpg", "name is not valid UTF-8")
    assert sorted(r for r, e in found.items() if isinstance(e, ScannedFile)) == [
        "a.jpg",
        "sub/b.PNG",
    ]


def test_a_file_gone_since_listing_is_refused(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_stat = Path.stat

    def vanishing(self: Path, *, follow_symlinks: bool = True) -> os.stat_result:
        if self.name == "a.jpg":
            raise FileNotFoundError(2, "No such file or directory")
        return real_stat(self, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(Path, "stat", vanishing)
    assert entries(tree)["a.jpg"] == Refused("a.jpg", "cannot be read (No such file or directory)")


def test_open_inside_checks_the_opened_file(tree: Path) -> None:
    with open_inside(tree.resolve(), "a.jpg") as opened:
        assert opened.read() == b"x"
    # The folder is swapped for a symlink leading out, after the walk.
    shutil.rmtree(tree / "sub")
    (tree / "sub").symlink_to(tree.parent / "photos-old")
    touch(tree.parent / "photos-old" / "b.PNG")
    with pytest.raises(PathRefused, match="resolves outside the collection root"):
        open_inside(tree.resolve(), "sub/b.PNG")
    with pytest.raises(PathRefused, match="not a regular file"):
        open_inside(tree.resolve(), ".")
    with pytest.raises(PathRefused, match="cannot be opened"):
        open_inside(tree.resolve(), "missing.jpg")


def test_a_root_swapped_for_a_symlink_after_it_was_resolved_leads_nowhere(
    tree: Path, tmp_path: Path
) -> None:
    root = ResolvedRoot(resolve_root(tree))
    root.check_unchanged()
    tree.rename(tmp_path / "moved")
    tree.symlink_to(tmp_path / "photos-old", target_is_directory=True)
    with pytest.raises(PathRefused, match="the folder changed since it was checked"):
        root.check_unchanged()
    # The walk of the resolved path does not follow the swap either.
    assert list(walk_images(root.path)) == [
        Refused("c.jpg", "resolves outside the collection root")
    ]


def test_a_set_stop_flag_ends_the_walk_at_the_next_entry(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    stop = threading.Event()
    walk = walk_images(tmp_path.resolve(), stop=stop)
    first = next(walk)
    assert first == ScannedFile("a.jpg", 1, first.mtime_ns)  # type: ignore[union-attr]
    stop.set()
    assert list(walk) == []
