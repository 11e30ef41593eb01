"""The benchmark's Dramatiq app on RabbitMQ.

Worker: ``python -m dramatiq bench.integrations_apps.dramatiq_app:broker
--processes 2 --threads 8``; monitor: ``jobtrack monitor --app
bench.integrations_apps.dramatiq_app:app``. The broker is
``$JOBTRACK_BENCH_AMQP_URL`` (default: guest on the local server).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

import jobtrack
from bench.integrations_apps.probe import STAGE, TYPE, Probe
from jobtrack.integrations.dramatiq import DramatiqTracking, JobtrackMiddleware

AMQP_URL = os.environ.get("JOBTRACK_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@dataclass
class Setup:
    """The app's parts, built from one environment."""

    broker: RabbitmqBroker
    app: jobtrack.App
    tracking: DramatiqTracking
    noop: dramatiq.Actor[..., None]
    queue: str


def build(env: Mapping[str, str], *, worker: bool = False) -> Setup:
    """The broker, the actor and the jobtrack tracking of ``env``; with
    ``worker`` and the mode ``tracked``, the middleware is added.

    :raises KeyError: a variable of the module missing.
    """
    broker = RabbitmqBroker(url=AMQP_URL)
    queue = env["JOBTRACK_BENCH_QUEUE"]
    probe = Probe(env)

    def noop(n: int) -> None:
        probe()

    actor = dramatiq.actor(actor_name="noop", queue_name=queue, broker=broker)(noop)
    app = jobtrack.App(jobtrack.Settings.from_env(env))
    tracking = DramatiqTracking(app, broker)
    tracking.job_type(TYPE, [STAGE], queues={STAGE: queue})
    if worker and env["JOBTRACK_BENCH_MODE"] == "tracked":
        broker.add_middleware(JobtrackMiddleware(app))
    return Setup(broker, app, tracking, actor, queue)


_built: Setup | None = None


def setup() -> Setup:
    """The parts built from this process's environment (once)."""
    global _built  # noqa: PLW0603 - built on first use, not on import
    if _built is None:
        _built = build(os.environ, worker=True)
    return _built


def __getattr__(name: str) -> Any:
    """``broker``, ``app``, ``tracking``: the parts of :func:`setup`."""
    if name in {"broker", "app", "tracking"}:
        return getattr(setup(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
