"""A private RabbitMQ cluster on this machine, for tests that lose a node.

:class:`RabbitCluster` starts extra RabbitMQ nodes beside the machine's own
(``rabbit@localhost``, which it never touches): each node has its own name
(``jt1@localhost``…), AMQP port, distribution port, configuration file,
data, log and pid file, all under one folder owned by the ``rabbitmq``
user, and no plugins (so no management or Prometheus listener). The
second and later nodes ``join_cluster`` the first. ``kill`` SIGKILLs a
node's Erlang VM (``beam.smp``), ``restart`` starts it again (it rejoins
its cluster), ``stop`` stops every node, the first last, has the first
``forget_cluster_node`` the others, and removes the folder.

The nodes share the machine node's Erlang cookie: ``rabbitmq-server`` and
``rabbitmqctl`` called as root run as the ``rabbitmq`` user (``su``), with
its home and cookie, and keep the ``RABBITMQ_*`` variables they are given.
A run that was aborted leaves nodes behind: :meth:`RabbitCluster.start`
stops them first (by name, else the pid in their pid file), and refuses
to start on a port that something else holds. Two runs of the same
cluster (same folder, so same names and ports) at once would stop each
other's nodes: :meth:`~RabbitCluster.start` takes an exclusive
``flock`` on a lock file beside the folder, which :meth:`~RabbitCluster.stop`
releases, so a second run waits for the first.

Each node's ``rabbitmq.conf`` sets ``queue_leader_locator = client-local``:
a quorum queue's leader is the node its declaring client is connected to
(RabbitMQ 4 balances leaders by default), which the tests rely on.

Used as a context manager::

    with RabbitCluster(("jt1", "jt2", "jt3"), first_port=5701) as cluster:
        url = cluster.broker_url(first="jt2")
        cluster.kill(cluster.leader_of("jobtrack.thumbnail"))
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

__all__ = ["ClusterError", "RabbitCluster", "RabbitNode", "cluster_unavailable"]

HOST = "localhost"
USER = "rabbitmq"
DIST_OFFSET = 20000  # a node's distribution port: its AMQP port + this


class ClusterError(RuntimeError):
    """A node of the private cluster could not be started, stopped or asked."""


def cluster_unavailable() -> str | None:
    """Why a private cluster cannot run here (not root, no RabbitMQ
    installed, no ``rabbitmq`` user), or None when it can."""
    if os.geteuid() != 0:
        return "starting RabbitMQ nodes needs root (they run as the rabbitmq user)"
    for command in ("rabbitmq-server", "rabbitmqctl"):
        if shutil.which(command) is None:
            return f"{command} is not on PATH"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER!r} user"
    return None


@dataclass(frozen=True)
class RabbitNode:
    """One node of the cluster: its short name, ports and folder."""

    name: str
    port: int
    home: Path

    @property
    def nodename(self) -> str:
        """The Erlang node name, ``name@localhost``."""
        return f"{self.name}@{HOST}"

    @property
    def dist_port(self) -> int:
        """The port the node's Erlang distribution listens on."""
        return self.port + DIST_OFFSET

    @property
    def pid_file(self) -> Path:
        """Where the node writes the pid of its Erlang VM."""
        return self.home / "pid"

    def environment(self) -> dict[str, str]:
        """The ``RABBITMQ_*`` variables that make this node its own."""
        return {
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
        }

    def url(self, vhost: str = "/", **options: str) -> str:
        """The ``amqp://`` URL of ``vhost`` on this node (as ``guest``),
        with jobtrack's URL options."""
        url = f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"
        if options:
            url += "?" + "&".join(f"{key}={value}" for key, value in options.items())
        return url


class RabbitCluster:
    """Extra RabbitMQ nodes clustered with each other, started and removed
    by the test that uses them.

    :param names: the nodes' short names; the first is the one the others join.
    :param first_port: the first node's AMQP port; the next nodes take the
        ports after it, and each node's distribution port is its AMQP port
        + 20000.
    :param root: the folder of the nodes' files (default: a folder named by
        ``first_port`` in the temporary directory, so that a later run finds
        what an aborted one left there); it must be reachable by the
        ``rabbitmq`` user. The lock file that keeps two runs apart is
        beside it (``<root>.lock``).
    :param lock_wait: seconds :meth:`start` waits for another run of the
        same cluster to end.
    :param management_port: enable the management plugin on the first
        node, listening on 127.0.0.1 at this port, its statistics sampled
        every half second (None: no plugins).
    :raises ValueError: no names.
    """

    def __init__(
        self,
        names: Sequence[str],
        first_port: int,
        *,
        root: Path | None = None,
        lock_wait: float = 1200,
        management_port: int | None = None,
    ) -> None:
        if not names:
            raise ValueError("a cluster needs at least one node")
        self.root = root or Path(tempfile.gettempdir()) / f"jobtrack-rabbit-{first_port}"
        self.lock_file = self.root.with_name(self.root.name + ".lock")
        self._lock_wait = lock_wait
        self._lock: int | None = None  # the lock file's descriptor, while held
        self.nodes = [
            RabbitNode(name, first_port + index, self.root / name)
            for index, name in enumerate(names)
        ]
        self._by_name = {node.name: node for node in self.nodes}
        self.management_port = management_port
        """The first node's management API port; None: no management plugin."""

    def __enter__(self) -> RabbitCluster:
        """Start the cluster (see :meth:`start`); stopped again if that
        fails, the start's error raised (a failure to stop added as a note).

        :raises ClusterError: it did not start, or another run held it too
            long (then nothing of that run is stopped).
        """
        self._take_lock()
        try:
            self.start()
        except BaseException as error:
            try:
                self.stop()
            except ClusterError as stopping:
                error.add_note(f"stopping the cluster failed too: {stopping}")
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the cluster and remove its files (see :meth:`stop`)."""
        self.stop()

    def node(self, name: str) -> RabbitNode:
        """The node named ``name``.

        :raises KeyError: no such node in this cluster.
        """
        return self._by_name[name]

    def url(self, name: str, vhost: str = "/", **options: str) -> str:
        """The URL of ``vhost`` on node ``name``."""
        return self.node(name).url(vhost, **options)

    def urls(self, vhost: str = "/", *, first: str | None = None, **options: str) -> list[str]:
        """Every node's URL, in the cluster's order turned to start at ``first``."""
        start = 0 if first is None else self.nodes.index(self.node(first))
        turned = self.nodes[start:] + self.nodes[:start]
        return [node.url(vhost, **options) for node in turned]

    def broker_url(self, vhost: str = "/", *, first: str | None = None, **options: str) -> str:
        """The nodes' URLs as jobtrack's broker setting takes them (comma-separated)."""
        return ",".join(self.urls(vhost, first=first, **options))

    def start(self) -> None:
        """Clear what an aborted run left, start every node and cluster them:
        each node after the first stops its app, resets, joins the first and
        starts again.

        Waits first (up to ``lock_wait`` seconds) for another run of the
        same cluster to stop it.

        :raises ClusterError: a node did not start, a port is held by
            something else, or another run held the cluster too long.
        """
        self._take_lock()
        self._clear_leftovers()
        self.root.mkdir(mode=0o755, parents=True)
        for node in self.nodes:
            self._prepare(node)
            self._launch(node)
        for node in self.nodes:
            self._await_running(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node.name, "stop_app")
            self.ctl(node.name, "reset")
            self.ctl(node.name, "join_cluster", first.nodename)
            self.ctl(node.name, "start_app")
        self.ctl(first.name, "await_online_nodes", str(len(self.nodes)), timeout=120)

    def kill(self, name: str) -> None:
        """SIGKILL node ``name``'s Erlang VM and wait until its ports are closed.

        :raises ClusterError: the node has no live VM to kill.
        """
        node = self.node(name)
        pid = self._vm_pid(node)
        if pid is None:
            raise ClusterError(f"{node.nodename} has no running VM to kill")
        os.kill(pid, signal.SIGKILL)
        self._await_closed(node)

    def restart(self, name: str) -> None:
        """Start node ``name`` again (it rejoins the cluster) and wait until it runs.

        :raises ClusterError: it did not start.
        """
        node = self.node(name)
        self._launch(node)
        self._await_running(node)

    def running(self, name: str) -> bool:
        """Whether node ``name`` accepts AMQP connections."""
        return _listening(self.node(name).port)

    def leader_of(self, queue: str, vhost: str = "/") -> str:
        """The short name of the node that leads quorum queue ``queue``.

        :raises ClusterError: no running node knows the queue.
        """
        for node in self.nodes:
            if not self.running(node.name):
                continue
            rows = json.loads(
                self.ctl(
                    node.name, "list_queues", "-p", vhost, "name", "leader", "--formatter", "json"
                )
                or "[]"
            )
            for row in rows:
                if row["name"] == queue and row.get("leader"):
                    return str(row["leader"]).split("@", 1)[0]
        raise ClusterError(f"no running node knows a leader of {queue!r} in {vhost!r}")

    def ctl(self, name: str, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n <node> args`` and return what it printed.

        :raises ClusterError: it failed or timed out.
        """
        command = ["rabbitmqctl", "-q", "-n", self.node(name).nodename, *args]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{' '.join(command)} timed out after {timeout:g} s") from exc
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout}")
        return done.stdout

    def stop(self) -> None:
        """Stop every node, the first last; the first forgets each other
        node once it is down; then remove the nodes' files and let another
        run start. Nodes that do not stop are killed; never raises for a
        node already down. Each node is stopped whatever happened to the
        others, and the files are removed and the lock released in any case.

        :raises ClusterError: a node still listened after it was killed
            (every such node named).
        """
        failures: list[str] = []
        try:
            first, *others = self.nodes
            for node in others:
                try:
                    self._stop_node(node)
                except ClusterError as exc:
                    failures.append(str(exc))
                    continue
                if self.running(first.name):
                    # Already forgotten, or the first node is going too: stopped below.
                    with contextlib.suppress(ClusterError):
                        self.ctl(first.name, "forget_cluster_node", node.nodename)
            try:
                self._stop_node(first)
            except ClusterError as exc:
                failures.append(str(exc))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self._release_lock()
        if failures:
            raise ClusterError("; ".join(failures))

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        descriptor = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self._lock_wait
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(descriptor)
                    raise ClusterError(
                        f"another run held {self.lock_file} for {self._lock_wait:g} s"
                    ) from None
                time.sleep(0.5)
                continue
            self._lock = descriptor
            return

    def _release_lock(self) -> None:
        descriptor, self._lock = self._lock, None
        if descriptor is not None:
            os.close(descriptor)  # releases the flock

    def _stop_node(self, node: RabbitNode) -> None:
        if _listening(node.port) or _listening(node.dist_port):
            with contextlib.suppress(ClusterError):  # killed below
                self.ctl(node.name, "stop", timeout=60)
        pid = self._vm_pid(node)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        self._await_closed(node)

    def _clear_leftovers(self) -> None:
        for node in self.nodes:
            self._stop_node(node)
            for port in (node.port, node.dist_port):
                if _listening(port):
                    raise ClusterError(f"port {port} is held by something other than {node.name}")
        shutil.rmtree(self.root, ignore_errors=True)

    def _prepare(self, node: RabbitNode) -> None:
        node.home.mkdir(mode=0o755)
        (node.home / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{node.port}\n"
            "loopback_users.guest = true\n"
            # A quorum queue's leader on the declaring client's node, as the
            # tests expect (RabbitMQ 4's default is balanced).
            "queue_leader_locator = client-local\n"
        )
        if self.management_port is not None and node is self.nodes[0]:
            with (node.home / "rabbitmq.conf").open("a") as conf:
                conf.write(
                    f"management.tcp.port = {self.management_port}\n"
                    "management.tcp.ip = 127.0.0.1\n"
                    "collect_statistics_interval = 500\n"
                )
            (node.home / "enabled_plugins").write_text("[rabbitmq_management].\n")
        else:
            (node.home / "enabled_plugins").write_text("[].\n")
        account = pwd.getpwnam(USER)
        for path in (self.root, node.home, *node.home.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)

    def _launch(self, node: RabbitNode) -> None:
        done = subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=os.environ | node.environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"{node.nodename} did not start: {done.stderr or done.stdout}")

    def _vm_pid(self, node: RabbitNode) -> int | None:
        """The pid of the node's live Erlang VM, as its pid file says, when
        that process is a ``beam`` started with this node's variables."""
        try:
            pid = int(node.pid_file.read_text().strip())
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        if b"beam" not in command:
            return None
        if f"RABBITMQ_NODENAME={node.nodename}".encode() not in environ:
            return None
        return pid

    def _await_running(self, node: RabbitNode, within: float = 90) -> None:
        # await_startup fails at once while the node is not yet known to
        # epmd: wait for its distribution port first.
        deadline = time.monotonic() + within
        while not _listening(node.dist_port):
            if time.monotonic() > deadline:
                log = node.home / "log" / f"{node.nodename}.log"
                tail = log.read_text()[-2000:] if log.exists() else "(no log)"
                raise ClusterError(f"{node.nodename} did not start within {within:g} s: {tail}")
            time.sleep(0.2)
        self.ctl(node.name, "await_startup", "--timeout", f"{within:g}", timeout=within + 30)

    def _await_closed(self, node: RabbitNode, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while _listening(node.port) or _listening(node.dist_port):
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.nodename} still listens after {within:g} s")
            time.sleep(0.1)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True
