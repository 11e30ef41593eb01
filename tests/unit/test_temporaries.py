"""A writer killed mid-write leaves its temporary file; the sweep removes
it, and never the file of a writer still at work."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from jobtrack.pipeline import imaging
from jobtrack.pipeline.imaging import sweep_temporaries

HOUR_AGO = time.time() - 3600

# A writer process that stops inside the write (before its fsync), says so,
# and waits to be killed: a worker killed while it writes a rendition.
WRITER = """
import os, sys, time
from pathlib import Path
from jobtrack.pipeline import imaging

def stall(fd):
    print("writing", flush=True)
    time.sleep(600)

os.fsync = stall
imaging.render(Path(sys.argv[1]), Path(sys.argv[2]), max_edge=100)
"""


class Writers:
    def __init__(self, source: Path, folder: Path) -> None:
        self.source, self.folder = source, folder
        self.started: list[subprocess.Popen[str]] = []

    def start(self, name: str) -> tuple[subprocess.Popen[str], Path]:
        """A writer of ``folder/name`` stopped mid-write, and its temporary file."""
        before = set(self.folder.glob(".*.tmp"))
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(self.source), str(self.folder / name)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.started.append(writer)
        assert writer.stdout is not None
        assert writer.stdout.readline() == "writing\n"
        [temporary] = set(self.folder.glob(".*.tmp")) - before
        assert temporary.name.startswith(f".{name}.")
        return writer, temporary


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[Writers]:
    source = tmp_path / "in.png"
    Image.new("RGB", (400, 300), "teal").save(source)
    folder = tmp_path / "out"
    folder.mkdir()
    found = Writers(source, folder)
    yield found
    for writer in found.started:
        writer.kill()
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()


def kill(writer: subprocess.Popen[str]) -> None:
    writer.send_signal(signal.SIGKILL)
    assert writer.wait(10) == -signal.SIGKILL


def test_a_writer_killed_mid_write_leaves_a_temporary_that_the_sweep_removes(
    writers: Writers,
) -> None:
    writer, temporary = writers.start("a.jpg")
    kill(writer)
    assert temporary.exists()  # the debris a killed worker leaves
    os.utime(temporary, (HOUR_AGO, HOUR_AGO))
    assert sweep_temporaries(writers.folder, older_than=600) == 1
    assert list(writers.folder.iterdir()) == []


def test_a_live_writers_temporary_survives_however_old(writers: Writers) -> None:
    live, working = writers.start("live.jpg")
    dead, debris = writers.start("dead.jpg")
    kill(dead)
    for path in (working, debris):
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    assert sweep_temporaries(writers.folder, older_than=600) == 1
    assert sorted(writers.folder.iterdir()) == [working]  # held by its writer's lock
    kill(live)
    assert sweep_temporaries(writers.folder, older_than=600) == 1
    assert list(writers.folder.iterdir()) == []


def test_a_young_temporary_and_other_files_are_left_alone(writers: Writers) -> None:
    writer, young = writers.start("young.jpg")
    kill(writer)
    folder = writers.folder
    others = [folder / "x.jpg", folder / ".x.jpg.tmp", folder / ".x.jpg.0123456789ab.tmp.jpg"]
    for path in others:
        path.write_bytes(b"kept")
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    (folder / ".d.jpg.0123456789ab.tmp").mkdir()  # a folder, not a writer's file
    os.symlink(folder / "x.jpg", folder / ".s.jpg.0123456789ab.tmp")
    os.utime(folder / ".s.jpg.0123456789ab.tmp", (HOUR_AGO, HOUR_AGO), follow_symlinks=False)
    assert sweep_temporaries(folder, older_than=600) == 0
    assert young.exists()
    assert all(path.read_bytes() == b"kept" for path in others)
    assert sweep_temporaries(folder / "missing", older_than=600) == 0


def test_the_lock_is_held_until_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between the write and the rename, a sweep (even one that finds the file
    # stale) must find the writer's lock held, and leave the file alone.
    source = tmp_path / "a.png"
    Image.new("RGB", (64, 48), "teal").save(source)
    folder = tmp_path / "out"
    real_replace = os.replace
    swept: list[tuple[int, list[str]]] = []

    def sweep_then_replace(src: str | Path, dst: str | Path) -> None:
        removed = sweep_temporaries(folder, older_than=-60)  # every temporary is stale
        swept.append((removed, sorted(p.name for p in folder.iterdir())))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", sweep_then_replace)
    imaging.render(source, folder / "a.jpg", max_edge=32)
    [(removed, present)] = swept
    assert removed == 0
    [temporary] = present
    assert re.fullmatch(r"\.a\.jpg\.[0-9a-f]{12}\.tmp", temporary)
    assert [p.name for p in folder.iterdir()] == ["a.jpg"]
    with Image.open(folder / "a.jpg") as rendition:
        assert rendition.size == (32, 24)
