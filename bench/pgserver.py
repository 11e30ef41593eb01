"""A private PostgreSQL server for the benchmarks, with settings of their own.

The machine's own server is shared: its settings are never changed. A
benchmark that compares server settings starts a cluster of its own
(``initdb`` in a temporary folder owned by the ``postgres`` user when run
as root, trust auth, its own port), with the settings written
to its ``postgresql.conf`` (``--pg-setting name=value`` adds to them), and removes it afterwards.

``CONFIGS`` names the settings the scale runs compare: ``machine-default``
(those of the project machine's shared server: 128 MB of shared buffers,
``max_wal_size`` 1 GB, autovacuum off) and ``production`` (a server tuned
for a write-heavy load: 1 GB of shared buffers, ``max_wal_size`` 8 GB,
``checkpoint_completion_target`` 0.9, ``wal_compression`` on, autovacuum
on). Both log their checkpoints.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

__all__ = ["CONFIGS", "PrivateServer", "ServerError", "private_server"]

_COMMON = {
    "log_checkpoints": "on",
    "log_line_prefix": "%m [%p] ",
    "log_timezone": "UTC",
    "max_connections": "200",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}

CONFIGS: dict[str, dict[str, str]] = {
    "machine-default": _COMMON
    | {
        "shared_buffers": "128MB",
        "max_wal_size": "1GB",
        "checkpoint_timeout": "5min",
        "checkpoint_completion_target": "0.9",
        "wal_compression": "off",
        "autovacuum": "off",
    },
    "production": _COMMON
    | {
        "shared_buffers": "1GB",
        "max_wal_size": "8GB",
        "checkpoint_timeout": "15min",
        "checkpoint_completion_target": "0.9",
        "wal_compression": "on",
        "autovacuum": "on",
    },
}

# the settings read back from a server into a run's results
REPORTED = (
    "server_version",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "checkpoint_completion_target",
    "wal_compression",
    "autovacuum",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_buffers",
    "bgwriter_lru_maxpages",
    "work_mem",
)


class ServerError(RuntimeError):
    """A private server could not be set up, started or stopped."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pg_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path is None:
        raise ServerError("no PostgreSQL server binaries (initdb) on this machine")
    return Path(on_path).parent


@dataclass
class PrivateServer:
    """One private cluster: its folder, port, owner and settings."""

    root: Path
    port: int
    owner: str | None
    settings: Mapping[str, str]
    bin: Path = field(default_factory=_pg_bin)

    @property
    def data(self) -> Path:
        """The cluster's data folder."""
        return self.root / "data"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        """The URL of ``database`` on this server, as the ``postgres`` role."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        command = list(argv) if self.owner is None else ["runuser", "-u", self.owner, "--", *argv]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ServerError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")

    def init(self) -> None:
        """``initdb`` the cluster (trust auth, ``postgres`` superuser).

        :raises ServerError: initdb failed.
        """
        initdb = str(self.bin / "initdb")
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        lines = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.root}'",
            *(f"{name} = '{value}'" for name, value in self.settings.items()),
        ]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n" + "\n".join(lines) + "\n")

    def start(self, *, within: float = 60) -> None:
        """Start the server (its settings are in its ``postgresql.conf``)
        and wait until it answers.

        :raises ServerError: it did not start, or did not answer in time.
        """
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(int(within)),
            "start",
        )
        deadline = time.monotonic() + within
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ServerError(f"private PostgreSQL did not answer: {exc}") from exc
                time.sleep(0.2)

    def running(self) -> bool:
        """Whether ``pg_ctl status`` finds the server running."""
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]
        command = argv if self.owner is None else ["runuser", "-u", self.owner, "--", *argv]
        return subprocess.run(command, capture_output=True, check=False).returncode == 0

    def remove(self) -> None:
        """Stop the server (``immediate``) if it runs and delete its folder."""
        if self.data.exists() and self.running():
            with contextlib.suppress(ServerError):
                argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate"]
                self._run(*argv, "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def checkpoints(self, since: float) -> list[dict[str, object]]:
        """The checkpoints the log records as complete after ``since``
        (epoch seconds): when each completed, and its log line's figures
        (buffers written, write/sync/total seconds, WAL distance in kB)."""
        found: list[dict[str, object]] = []
        if not self.log.exists():
            return found
        for line in self.log.read_text(errors="replace").splitlines():
            if "checkpoint complete" not in line:
                continue
            when = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
            stamp = when.replace(tzinfo=UTC).timestamp()
            if stamp < since:
                continue
            numbers = {
                key: float(value)
                for key, value in re.findall(
                    r"(wrote|write|sync|total|distance)=?\s?([0-9.]+)", line.split("complete:")[1]
                )
            }
            found.append(
                {"completed_at": stamp, **numbers, "line": line[line.index("checkpoint") :]}
            )
        return found


def settings_of(url: str) -> dict[str, str]:
    """The ``REPORTED`` settings of the server at ``url``, as it shows them."""
    with psycopg.connect(url) as conn:
        return {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in REPORTED
        }


@contextlib.contextmanager
def private_server(settings: Mapping[str, str]) -> Iterator[PrivateServer]:
    """A private cluster with ``settings``, initialised and started,
    removed afterwards.

    :raises ServerError: it could not be set up or started.
    """
    owner = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="jobtrack-bench-pg-"))
    if owner is not None:
        shutil.chown(root, owner, owner)
    server = PrivateServer(root=root, port=_free_port(), owner=owner, settings=settings)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()
