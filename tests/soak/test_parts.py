"""The soak's pure parts: its fault schedule, a stream client's view, its quantiles."""

from __future__ import annotations

import json
import random

from tests.soak.checks import fault_summary, faults_undone, percentile
from tests.soak.clients import StreamClient
from tests.soak.faults import KINDS, schedule
from tests.soak.run import plan_for


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    first = schedule(120, 7, workers=5, clients=20, stuck_after=10, node_lost=False)
    assert first == schedule(120, 7, workers=5, clients=20, stuck_after=10, node_lost=False)
    assert first != schedule(120, 8, workers=5, clients=20, stuck_after=10, node_lost=False)
    assert [fault.at for fault in first] == sorted(fault.at for fault in first)


def test_a_two_minute_schedule_has_each_large_fault_once_and_no_node_lost() -> None:
    faults = schedule(120, 7, workers=5, clients=20, stuck_after=10, node_lost=False)
    kinds = [fault.kind for fault in faults]
    large = sorted(k for k in kinds if k not in ("worker_kill", "stream_cut"))
    assert large == ["postgres_restart", "rabbitmq_restart", "worker_pause"]
    assert kinds.count("worker_kill") >= 15
    assert all(0 < fault.at < 120 for fault in faults)
    pause = next(fault for fault in faults if fault.kind == "worker_pause")
    assert pause.params["seconds"] > 10  # past the stuck threshold


def test_a_cluster_schedule_loses_a_node_and_a_long_one_repeats_the_large_faults() -> None:
    faults = schedule(1800, 1, workers=5, clients=20, stuck_after=10, node_lost=True)
    counts = {kind: sum(f.kind == kind for f in faults) for kind in KINDS}
    assert set(counts) == set(KINDS)
    for kind in ("rabbitmq_restart", "postgres_restart", "worker_pause", "node_lost"):
        assert counts[kind] >= 4, counts
    restarts = [f.params["kill"] for f in faults if f.kind == "rabbitmq_restart"]
    assert sorted(set(restarts)) == [False, True]


def test_the_plans_sizes() -> None:
    short, long = plan_for(2, 7), plan_for(30, 1, cluster=True)
    assert (short.jobs, short.items, short.waves, short.node_lost) == (12, 1000, 4, False)
    assert (long.jobs, long.items, long.waves, long.node_lost) == (100, 1000, 15, True)


def test_a_client_keeps_the_newest_write_of_each_job() -> None:
    client = StreamClient(0, "http://127.0.0.1:1", random.Random(0))
    old = {"id": "a", "seq": 3, "status": "in_progress"}
    new = {"id": "a", "seq": 5, "status": "completed"}
    other = {"id": "b", "seq": 4, "status": "pending"}
    client.take("snapshot", json.dumps({"jobs": [new, other], "complete": True}))
    client.take("job", json.dumps(old))  # an older write, sent again after a reconnect
    assert client.view == {"a": new, "b": other}
    client.take("job", json.dumps({**other, "seq": 6, "status": "completed"}))
    assert client.view["b"]["status"] == "completed"
    client.take("keep-alive", "")
    assert client.events == 4


def test_percentiles_by_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (
        50.0,
        99.0,
        100.0,
    )
    assert percentile([], 0.5) is None
    assert percentile([2.5], 0.99) == 2.5


def test_the_fault_summary_counts_what_was_skipped_apart() -> None:
    entries = [
        {"kind": "worker_kill", "recovered": True, "note": "worker-1"},
        {"kind": "worker_kill", "recovered": True, "note": "skipped: not running, or stopped"},
        {"kind": "postgres_restart", "recovered": False, "note": "ServiceError: x"},
    ]
    summary = fault_summary(entries, ok=True)
    assert summary["worker_kill"] == {"injected": 1, "recovered": 1, "survived": 1, "skipped": 1}
    assert summary["postgres_restart"] == {
        "injected": 1,
        "recovered": 0,
        "survived": 0,
        "skipped": 0,
    }
    assert summary["node_lost"] == {"injected": 0, "recovered": 0, "survived": 0, "skipped": 0}
    assert fault_summary(entries, ok=False)["worker_kill"]["survived"] == 0


def test_a_fault_not_undone_fails_its_check() -> None:
    undone = {"kind": "postgres_restart", "at": 30.0, "recovered": True, "note": "fast"}
    stuck = {"kind": "rabbitmq_restart", "at": 60.0, "recovered": False, "note": "timed out"}
    assert faults_undone([undone])["ok"] is True
    failed = faults_undone([undone, stuck])
    assert failed["ok"] is False
    assert failed["detail"] == ["rabbitmq_restart at 60.0 s: timed out"]
