"""A pseudo-terminal for the tests of ``jobtrack top``: what a terminal
receives, read back as text, frame by frame."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import struct
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

ESCAPE = re.compile(rb"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][A-Za-z0-9]|[=>78])")
"""The terminal's escape sequences (cursor, colours, screen switches)."""


@contextlib.contextmanager
def pseudo_terminal(lines: int = 60, columns: int = 200) -> Iterator[tuple[int, int]]:
    """A pseudo-terminal of ``lines`` lines of ``columns`` columns: (master, slave)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    try:
        yield master, slave
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class Screen:
    """What a pseudo-terminal received, with the escape sequences left out."""

    fd: int
    raw: bytearray = field(default_factory=bytearray)

    def read(self, seconds: float) -> None:
        """Take what comes for up to ``seconds`` (less once the other end closes)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # the other end closed
                return
            if not chunk:
                return
            self.raw += chunk

    @property
    def frames(self) -> list[str]:
        """The frames drawn so far, each as its text."""
        text = text_of(bytes(self.raw))
        return text.split("jobtrack top — ")[1:]

    def wait_for(self, check: Callable[[str], bool], *, within: float, after: int = 0) -> str:
        """The first frame drawn after the first ``after`` that passes ``check``."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.read(0.2)
            for frame in self.frames[after:-1]:  # the last one may be half drawn
                if check(frame):
                    return frame
        shown = self.frames[-2:] if self.frames else ["(nothing)"]
        raise AssertionError("no such frame; the last ones:\n" + "\n----\n".join(shown))


def rows_of(frame: str) -> list[list[str]]:
    """The table rows of a frame, each as its cells' text."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in frame.splitlines()
        if line.strip().startswith("│")
    ]


def has_row(*cells: str) -> Callable[[str], bool]:
    """Whether a frame has a row that starts with ``cells``."""
    return lambda frame: any(row[: len(cells)] == list(cells) for row in rows_of(frame))


def text_of(raw: bytes) -> str:
    """What the terminal received, without its escape sequences."""
    return ESCAPE.sub(b"", raw).decode("utf-8", "replace")
