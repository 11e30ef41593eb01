"""The contract's Dramatiq app: actors ``ok`` and ``fail`` on a RabbitMQ
broker, the job type ``contract`` whose ``work`` items they are, and the
middleware that counts them.

Everything is built from the environment on first use of a module
attribute (``broker`` for ``python -m dramatiq``, ``app`` for ``jobtrack
monitor --app``), so importing the module alone connects to nothing:

- ``JOBTRACK_BROKER_URL``: the RabbitMQ virtual host;
- ``JOBTRACK_STORE_URL``: the jobtrack store;
- ``JOBTRACK_TEST_QUEUE``: the actors' queue;
- ``JOBTRACK_TEST_RAW_KEY``: the Redis hash whose field ``ok`` counts runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

import jobtrack
from jobtrack.integrations.dramatiq import DramatiqTracking, JobtrackMiddleware
from tests.integrations.contract import STAGE, TYPE

REDIS_URL = "redis://127.0.0.1:6379/0"
RAW_FIELD = "ok"


@dataclass
class Setup:
    """The app's parts, built from one environment."""

    broker: RabbitmqBroker
    app: jobtrack.App
    tracking: DramatiqTracking
    ok: dramatiq.Actor[..., None]
    fail: dramatiq.Actor[..., None]
    queue: str


def build(env: Mapping[str, str]) -> Setup:
    """The broker, actors, jobtrack app and job type of ``env``."""
    broker = RabbitmqBroker(url=env["JOBTRACK_BROKER_URL"])
    queue = env["JOBTRACK_TEST_QUEUE"]
    raw_key = env["JOBTRACK_TEST_RAW_KEY"]
    raw = redis.Redis.from_url(REDIS_URL)

    def ok(n: int, pause: float = 0.0) -> None:
        raw.hincrby(raw_key, RAW_FIELD, 1)
        if pause:
            time.sleep(pause)

    def fail(n: int) -> None:
        raise ValueError(f"task {n} failed")

    ok_actor = dramatiq.actor(actor_name="ok", queue_name=queue, broker=broker, max_retries=2)(ok)
    fail_actor = dramatiq.actor(
        actor_name="fail",
        queue_name=queue,
        broker=broker,
        max_retries=2,
        min_backoff=1,
        max_backoff=10,
    )(fail)
    app = jobtrack.App(jobtrack.Settings.from_env(env))
    tracking = DramatiqTracking(app, broker)
    tracking.job_type(TYPE, [STAGE], queues={STAGE: queue})
    broker.add_middleware(JobtrackMiddleware(app))
    return Setup(broker, app, tracking, ok_actor, fail_actor, queue)


_built: Setup | None = None


def setup() -> Setup:
    """The parts built from this process's environment (once)."""
    global _built  # noqa: PLW0603 - built on first use, not on import
    if _built is None:
        _built = build(os.environ)
    return _built


def __getattr__(name: str) -> Any:
    """``broker``, ``app``, ``tracking``: the parts of :func:`setup`."""
    if name in {"broker", "app", "tracking"}:
        return getattr(setup(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
