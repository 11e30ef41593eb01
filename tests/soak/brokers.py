"""The soak's broker: one private RabbitMQ node, or a private cluster of three.

Both restart RabbitMQ on the schedule's ``rabbitmq_restart``: the single
node is stopped (or its VM SIGKILLed) and started again; the cluster is
restarted node by node, each stopped (or killed) and started again before
the next, so that its quorum queues keep a majority. Only the cluster can
lose a node for good while the work goes on (``node_lost``): the node
leading the soak's stage queue is SIGKILLed and started again later.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Protocol

from tests.services.postgres_private import ServiceError
from tests.services.rabbitmq_nodes import ClusterError, RabbitCluster, cluster_unavailable
from tests.services.rabbitmq_soak import PrivateRabbit, private_rabbit

__all__ = ["ClusterBroker", "SingleBroker", "SoakBroker", "soak_broker"]

#: The cluster's node names (others on the machine may run ``jt1``…).
NODES = ("jts1", "jts2", "jts3")


class SoakBroker(Protocol):
    """What the soak does with its broker."""

    #: Whether ``node_lost`` can be injected.
    cluster: bool

    def url_for(self, number: int) -> str:
        """The broker setting of process ``number`` (a cluster's processes
        start on different nodes)."""
        ...

    def restart(self, *, kill: bool, down_for: float) -> str:
        """Restart RabbitMQ; what was done."""
        ...

    def lose_leader(self, queue: str, down_for: float) -> str:
        """SIGKILL the node leading ``queue``, start it again after
        ``down_for`` seconds; what was done."""
        ...


class SingleBroker:
    """One private node."""

    cluster = False

    def __init__(self, node: PrivateRabbit) -> None:
        self.node = node

    def url_for(self, number: int) -> str:
        """The node's URL, whoever asks."""
        return self.node.url

    def restart(self, *, kill: bool, down_for: float) -> str:
        """Stop (or SIGKILL) the node and start it again.

        :raises ServiceError: it did not come back.
        """
        return self.node.restart(kill=kill, down_for=down_for)

    def lose_leader(self, queue: str, down_for: float) -> str:
        """Nothing: a single node has no other to go on with."""
        return "not injected: the soak's broker is a single node (no cluster to lose one of)"


class ClusterBroker:
    """A private cluster of three nodes; every URL lists them all."""

    cluster = True

    def __init__(self, nodes: RabbitCluster) -> None:
        self.nodes = nodes

    def url_for(self, number: int) -> str:
        """Every node's URL, starting with node ``number`` modulo three."""
        first = NODES[number % len(NODES)]
        return self.nodes.broker_url(first=first)

    def restart(self, *, kill: bool, down_for: float) -> str:
        """Restart every node in turn (stopped, or SIGKILLed), each up
        again before the next goes down.

        :raises ClusterError: a node did not come back.
        """
        killed = 0
        for name in NODES:
            if kill:
                self.nodes.kill(name)
            else:
                try:
                    self.nodes.ctl(name, "stop", timeout=120)
                    _wait_closed(self.nodes.node(name).port)
                except ClusterError:  # too slow to stop on a busy machine
                    self.nodes.kill(name)
                    killed += 1
            time.sleep(down_for / len(NODES))
            self.nodes.restart(name)
        self.nodes.ctl(NODES[0], "await_online_nodes", str(len(NODES)), timeout=120)
        done = "SIGKILL" if kill else "rabbitmqctl stop"
        if killed:
            done += f" ({killed} too slow to stop, SIGKILLed)"
        return done + ", node by node"

    def lose_leader(self, queue: str, down_for: float) -> str:
        """SIGKILL the leader of ``queue``; start it again after ``down_for`` s.

        :raises ClusterError: no leader is known, or it did not come back.
        """
        leader = self.nodes.leader_of(queue)
        self.nodes.kill(leader)
        time.sleep(down_for)
        self.nodes.restart(leader)
        return f"{leader} (leader of {queue}) SIGKILLed, back after {down_for:g} s"


def _wait_closed(port: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
        except OSError:
            return
        time.sleep(0.1)
    raise ClusterError(f"port {port} still open {within:g} s after the node stopped")


def _cluster_port() -> int:
    """A first AMQP port whose three ports and their distribution ports are free."""
    for first in range(36101, 36400, 7):  # clear of other clusters (5701…, 25701…)
        ports = [first + n for n in range(len(NODES))]
        ports += [port + 20000 for port in ports]
        if not any(_listening(port) for port in ports):
            return first
    raise ServiceError("no free ports for a private RabbitMQ cluster")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return False
    return True


def _started_cluster(attempts: int = 3) -> RabbitCluster:
    """A started cluster; a start that fails (a node slow to boot on a busy
    machine) is cleared and tried again, ``attempts`` times in all."""
    for attempt in range(1, attempts + 1):
        nodes = RabbitCluster(NODES, _cluster_port())
        try:
            nodes.start()
        except ClusterError as exc:
            nodes.stop()
            if attempt == attempts:
                raise ServiceError(str(exc)) from exc
        else:
            return nodes
    raise AssertionError("unreachable")


@contextlib.contextmanager
def soak_broker(*, cluster: bool) -> Iterator[SoakBroker]:
    """The soak's broker, started, and removed afterwards.

    :raises ServiceError: it could not start.
    """
    if not cluster:
        with private_rabbit() as node:
            yield SingleBroker(node)
        return
    why = cluster_unavailable()
    if why is not None:
        raise ServiceError(f"cannot start a private RabbitMQ cluster: {why}")
    nodes = _started_cluster()
    try:
        yield ClusterBroker(nodes)
    finally:
        nodes.stop()
