"""A private PostgreSQL server that a test may stop, kill and restart.

The machine's own server is shared and never restarted; this one is a
cluster of its own (``initdb`` in a temporary folder owned by the
``postgres`` user, trust auth, its own port), driven with ``pg_ctl`` and
removed by :meth:`PrivatePostgres.remove`. Run as root, the server's
commands run as ``postgres`` (``runuser``); run as another user, as that
user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

__all__ = ["PrivatePostgres", "ServiceError", "free_port", "pg_bin", "private_postgres"]


class ServiceError(RuntimeError):
    """A private service could not be set up, started or stopped."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pg_bin() -> Path:
    """The newest PostgreSQL server binaries' folder.

    :raises ServiceError: none is installed.
    """
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not found:
        on_path = shutil.which("initdb")
        if on_path is None:
            raise ServiceError("no PostgreSQL server binaries (initdb) on this machine")
        return Path(on_path).parent
    return Path(found[-1]).parent


def _as_owner(owner: str | None, argv: list[str]) -> list[str]:
    return argv if owner is None else ["runuser", "-u", owner, "--", *argv]


@dataclass
class PrivatePostgres:
    """One private cluster: its folder, port and log; ``url`` is its
    ``postgres`` database as the ``postgres`` role."""

    root: Path
    port: int
    owner: str | None
    bin: Path = field(default_factory=pg_bin)

    @property
    def data(self) -> Path:
        """The cluster's data folder."""
        return self.root / "data"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        """The URL of ``database`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float = 120) -> str:
        done = subprocess.run(
            _as_owner(self.owner, list(argv)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise ServiceError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    def init(self) -> None:
        """``initdb`` the cluster (trust auth, ``postgres`` superuser).

        :raises ServiceError: initdb failed.
        """
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        settings = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.root}'",
            "max_connections = 200",
            "fsync = on",
            "shared_buffers = 64MB",
        ]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n" + "\n".join(settings) + "\n")

    def start(self, *, within: float = 60) -> None:
        """Start the server and wait until it takes connections.

        :raises ServiceError: it did not start, or did not answer in time.
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
        self.wait_ready(within=within)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: connections cut, a clean shutdown;
        ``immediate``: no checkpoint, a crash recovery at the next start).

        :raises ServiceError: pg_ctl failed.
        """
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast", down_for: float = 0.0) -> None:
        """Stop (``mode``), stay down ``down_for`` seconds, start again.

        :raises ServiceError: a step failed.
        """
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def running(self) -> bool:
        """Whether ``pg_ctl status`` finds the server running."""
        done = subprocess.run(
            _as_owner(self.owner, [str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]),
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def wait_ready(self, *, within: float = 60) -> None:
        """Wait until a connection succeeds.

        :raises ServiceError: none did within ``within`` seconds.
        """
        deadline = time.monotonic() + within
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ServiceError(f"private PostgreSQL did not answer: {exc}") from exc
                time.sleep(0.2)
            else:
                return

    def create_database(self, name: str) -> str:
        """Create database ``name``; its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        """Stop the server (immediately) if it runs and delete its folder."""
        if self.data.exists() and self.running():
            with contextlib.suppress(ServiceError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres(port: int | None = None) -> Iterator[PrivatePostgres]:
    """A private cluster, initialised and started, removed afterwards.

    :raises ServiceError: it could not be set up or started.
    """
    owner = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="jobtrack-pg-"))
    if owner is not None:
        shutil.chown(root, owner, owner)
    server = PrivatePostgres(root=root, port=port or free_port(), owner=owner)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()
