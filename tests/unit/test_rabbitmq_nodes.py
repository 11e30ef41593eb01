"""The private RabbitMQ cluster's own bookkeeping (``tests/services/rabbitmq_nodes.py``):
stopping every node whatever fails, two runs kept apart by a lock, and the
configuration each node is given. No node is started here: the steps that
start or stop one are replaced by recorders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.services.rabbitmq_nodes import (
    USER,
    ClusterError,
    RabbitCluster,
    RabbitNode,
    cluster_unavailable,
)


class _Recorded(RabbitCluster):
    """A cluster whose nodes are never started: ``_stop_node`` records the
    node and fails for those named in ``stuck``; ``start`` records and
    fails when ``start_fails``."""

    def __init__(self, root: Path, *, stuck: set[str], lock_wait: float = 60) -> None:
        super().__init__(("n1", "n2", "n3"), 47001, root=root, lock_wait=lock_wait)
        self.stuck = stuck
        self.stopped: list[str] = []
        self.start_fails = False

    def _stop_node(self, node: RabbitNode) -> None:
        self.stopped.append(node.name)
        if node.name in self.stuck:
            raise ClusterError(f"{node.nodename} still listens after 60 s")

    def running(self, name: str) -> bool:
        return False

    def start(self) -> None:
        self._take_lock()
        self.root.mkdir()
        if self.start_fails:
            raise ClusterError("n2@localhost did not start")


def test_stop_stops_every_node_removes_the_folder_and_raises_at_the_end(
    tmp_path: Path,
) -> None:
    cluster = _Recorded(tmp_path / "cluster", stuck={"n2"})
    cluster.start()
    with pytest.raises(ClusterError, match=r"^n2@localhost still listens after 60 s$"):
        cluster.stop()
    assert cluster.stopped == ["n2", "n3", "n1"]
    assert not cluster.root.exists()
    # The lock was released: another run starts at once.
    other = _Recorded(tmp_path / "cluster", stuck=set(), lock_wait=0)
    other.start()
    other.stop()


def test_a_failed_start_is_the_error_raised_even_when_stopping_fails(tmp_path: Path) -> None:
    cluster = _Recorded(tmp_path / "cluster", stuck={"n1", "n3"})
    cluster.start_fails = True
    with pytest.raises(ClusterError, match="n2@localhost did not start") as raised, cluster:
        pytest.fail("started")
    assert raised.value.__notes__ == [
        "stopping the cluster failed too: n3@localhost still listens after 60 s;"
        " n1@localhost still listens after 60 s"
    ]
    assert cluster.stopped == ["n2", "n3", "n1"]
    assert not cluster.root.exists()


def test_a_second_run_waits_for_the_first_and_stops_none_of_its_nodes(tmp_path: Path) -> None:
    first = _Recorded(tmp_path / "cluster", stuck=set())
    first.start()
    second = _Recorded(tmp_path / "cluster", stuck=set(), lock_wait=0.6)
    held = r"another run held .*cluster\.lock for 0\.6 s"
    with pytest.raises(ClusterError, match=held), second:
        pytest.fail("started beside another run")
    assert second.stopped == []  # the first run's nodes untouched
    assert first.root.exists()
    first.stop()
    with second:
        assert second.root.exists()
    assert second.stopped == ["n2", "n3", "n1"]


@pytest.mark.skipif(cluster_unavailable() is not None, reason=f"needs root and a {USER!r} user")
def test_each_node_places_a_quorum_queue_leader_on_the_declaring_clients_node(
    tmp_path: Path,
) -> None:
    os.chmod(tmp_path, 0o755)
    cluster = RabbitCluster(("n1",), 47001, root=tmp_path / "cluster")
    cluster.root.mkdir()
    cluster._prepare(cluster.node("n1"))
    conf = (cluster.root / "n1" / "rabbitmq.conf").read_text().splitlines()
    assert conf == [
        "listeners.tcp.local = 127.0.0.1:47001",
        "loopback_users.guest = true",
        "queue_leader_locator = client-local",
    ]
