"""A private RabbitMQ node that a test may stop, kill and restart.

The machine's own node is shared and never restarted; this one has a node
name, ports, database, logs and configuration of its own (all in a
temporary folder owned by the ``rabbitmq`` user), is started with
``rabbitmq-server -detached`` and removed by :meth:`PrivateRabbit.remove`.
Run as root, its commands run as ``rabbitmq`` (``runuser``), with the
``rabbitmq`` user's home, whose Erlang cookie ``rabbitmqctl`` needs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.services.postgres_private import ServiceError, free_port

__all__ = ["PrivateRabbit", "private_rabbit"]

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


@dataclass
class PrivateRabbit:
    """One private node: its folder, node name and ports; ``url`` is its
    default virtual host as ``guest`` (allowed from 127.0.0.1)."""

    root: Path
    name: str
    port: int
    dist_port: int
    owner: str | None

    @property
    def pid_file(self) -> Path:
        """Where the node writes its Erlang VM's process id."""
        return self.root / "node.pid"

    @property
    def url(self) -> str:
        """The AMQP URL of the node's default virtual host."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        """The environment of the node's commands."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        home = pwd.getpwnam(self.owner).pw_dir if self.owner else os.environ.get("HOME", "/")
        env |= {
            "HOME": home,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_ENABLED_PLUGINS": "",
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        return env

    def _argv(self, *argv: str) -> list[str]:
        if self.owner is None:
            return list(argv)
        return ["runuser", "-u", self.owner, "--", *argv]

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n NODE ARGS``; what it printed.

        :raises ServiceError: it failed.
        """
        done = subprocess.run(
            self._argv(CTL, "-q", "-n", self.name, *args),
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if done.returncode != 0:
            raise ServiceError(f"rabbitmqctl {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def write_config(self) -> None:
        """The node's configuration files."""
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = warning\n"
            "vm_memory_high_watermark.relative = 0.3\n"
            "disk_free_limit.absolute = 50MB\n"
        )
        (self.root / "advanced.config").write_text("[].\n")
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("")
        for sub in ("mnesia", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        if self.owner is not None:
            for path in [self.root, *self.root.iterdir()]:
                shutil.chown(path, self.owner, self.owner)

    def start(self, *, within: float = 240) -> None:
        """Start the node and wait until its AMQP port answers.

        :raises ServiceError: it did not come up in time.
        """
        subprocess.run(
            self._argv(SERVER, "-detached"),
            env=self.env(),
            capture_output=True,
            check=False,
            timeout=60,
            cwd=self.root,
        )
        deadline = time.monotonic() + within
        while True:
            try:
                self.ctl("await_startup", timeout=max(5.0, deadline - time.monotonic()))
                socket.create_connection(("127.0.0.1", self.port), 2).close()
            except (ServiceError, OSError, subprocess.TimeoutExpired) as exc:
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"private RabbitMQ node {self.name} did not start: {exc}"
                    ) from exc
                time.sleep(0.5)
            else:
                return

    def pid(self) -> int | None:
        """The node's Erlang VM process id, while it runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def stop(self) -> str:
        """Stop the node cleanly (``rabbitmqctl stop``), waiting for its VM
        to end; a node that does not stop within two minutes (a busy
        machine) is SIGKILLed. What was done.

        :raises ServiceError: it did not end even then.
        """
        pid = self.pid()
        try:
            self.ctl("stop", timeout=120)
            self._wait_gone(pid)
        except (ServiceError, subprocess.TimeoutExpired) as exc:
            self.kill()
            return f"rabbitmqctl stop failed ({type(exc).__name__}), SIGKILLed"
        return "rabbitmqctl stop"

    def kill(self) -> None:
        """SIGKILL the node's VM: a node lost at once."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid)

    def _wait_gone(self, pid: int | None, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"RabbitMQ node {self.name} (pid {pid}) did not exit")
            time.sleep(0.1)

    def restart(self, *, kill: bool = False, down_for: float = 0.0) -> str:
        """Stop (or SIGKILL) the node, stay down ``down_for`` seconds, start
        it; what was done.

        :raises ServiceError: a step failed.
        """
        if kill:
            self.kill()
            done = "SIGKILL"
        else:
            done = self.stop()
        time.sleep(down_for)
        self.start()
        return done

    def remove(self) -> None:
        """Kill the node if it runs and delete its folder."""
        with contextlib.suppress(OSError, ServiceError):
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_rabbit(port: int | None = None) -> Iterator[PrivateRabbit]:
    """A private node, configured and started, removed afterwards.

    :raises ServiceError: it could not be started.
    """
    if not os.path.exists(SERVER):
        raise ServiceError(f"no RabbitMQ server at {SERVER}")
    owner = "rabbitmq" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="jobtrack-rmq-"))
    node = PrivateRabbit(
        root=root,
        name=f"jtsoak{uuid.uuid4().hex[:6]}@localhost",
        port=port or free_port(),
        dist_port=free_port(),
        owner=owner,
    )
    try:
        node.write_config()
        node.start()
        yield node
    finally:
        node.remove()
