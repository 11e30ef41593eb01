"""The soak's fault schedule: what happens when, from a seed.

Small faults come often: a worker SIGKILLed every few seconds (and
restarted shortly after), stream clients cut. Large ones take turns, one
every ``major_every`` seconds: RabbitMQ restarted (a clean stop or a
SIGKILL of its VM), PostgreSQL restarted (``fast`` or ``immediate``), a
worker SIGSTOPped for longer than the stuck threshold, and, with a
RabbitMQ cluster, the node leading the stage queues lost (``node_lost``:
the hook is in the schedule, the runner injects it only when it has a
cluster). The same seed and length give the same schedule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "MAJOR", "Fault", "schedule"]

#: Every kind of fault, in the report's order.
KINDS = (
    "worker_kill",
    "stream_cut",
    "rabbitmq_restart",
    "postgres_restart",
    "worker_pause",
    "node_lost",
)
#: The large faults, which take turns.
MAJOR = ("rabbitmq_restart", "postgres_restart", "worker_pause", "node_lost")


@dataclass(frozen=True)
class Fault:
    """One fault: when (seconds into the run), what, and its parameters."""

    at: float
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


def schedule(
    seconds: float,
    seed: int,
    *,
    workers: int,
    clients: int,
    stuck_after: float,
    node_lost: bool,
    major_every: float | None = None,
) -> list[Fault]:
    """The faults of a run of ``seconds``, in time order.

    :param node_lost: whether the large faults include ``node_lost``.
    :param major_every: seconds between large faults [default: a third of
        a short run, 90 s in a long one].
    """
    rng = random.Random(seed)
    faults: list[Fault] = []
    at = rng.uniform(2, 5)
    while at < seconds:
        faults.append(
            Fault(
                at,
                "worker_kill",
                {"worker": rng.randrange(workers), "down_for": round(rng.uniform(0.3, 2.0), 2)},
            )
        )
        at += rng.uniform(2.5, 6.0)
    at = rng.uniform(3, 8)
    while at < seconds:
        picked = sorted(rng.sample(range(clients), rng.randint(1, clients)))
        faults.append(Fault(at, "stream_cut", {"clients": picked}))
        at += rng.uniform(4.0, 12.0)
    kinds = [kind for kind in MAJOR if node_lost or kind != "node_lost"]
    every = major_every or (seconds / (len(kinds) + 1) if seconds < 600 else 90.0)
    at = every
    turn: list[str] = []
    done = {kind: rng.randrange(2) for kind in kinds}  # each kind alternates its two ways
    while at < seconds - 5:
        if not turn:
            turn = list(kinds)
            rng.shuffle(turn)
        kind = turn.pop()
        count = done[kind]
        done[kind] += 1
        params: dict[str, Any]
        if kind == "rabbitmq_restart":
            params = {"kill": count % 2 == 1, "down_for": round(rng.uniform(1, 5), 1)}
        elif kind == "postgres_restart":
            params = {
                "mode": "immediate" if count % 2 == 1 else "fast",
                "down_for": round(rng.uniform(1, 5), 1),
            }
        elif kind == "worker_pause":
            params = {
                "worker": rng.randrange(workers),
                "seconds": round(stuck_after + rng.uniform(2, 6), 1),
            }
        else:
            params = {"down_for": round(rng.uniform(5, 15), 1)}
        faults.append(Fault(round(at, 2), kind, params))
        at += every * rng.uniform(0.8, 1.2)
    return sorted(faults, key=lambda fault: fault.at)
