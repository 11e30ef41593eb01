"""A real ``jobtrack serve`` in a subprocess, on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

TOKEN = "test-token-5f2c"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A running server: its base URL, data folder and scan root."""

    url: str
    data_dir: Path
    root: Path
    process: subprocess.Popen[str]
    log: Path

    def client(self, *, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def running_server(
    folder: Path,
    *,
    host: str = "127.0.0.1",
    token: str | None = TOKEN,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Start ``jobtrack serve`` on a SQLite store under ``folder``; stop it after."""
    data_dir, root = folder / "state", folder / "photos"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    if token:
        environment["JOBTRACK_API_TOKEN"] = token
    environment.update(env or {})
    log = folder / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobtrack",
                "serve",
                "--host",
                host,
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--root",
                str(root),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            text=True,
        )
    address = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
    server = Server(f"http://{address}:{port}", data_dir, root, process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, server.output()
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
