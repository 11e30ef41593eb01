"""The benchmark's Celery app on Redis (broker and result backend), prefork.

Worker: ``celery -A bench.integrations_apps.celery_app:celery_app worker
--pool prefork --concurrency 2 -Q $JOBTRACK_BENCH_QUEUE``; monitor:
``jobtrack monitor --app bench.integrations_apps.celery_app:app``. Celery's
defaults otherwise (tasks acked early, a prefetch multiplier of 4).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, signals  # type: ignore[import-untyped]

import jobtrack
from bench.integrations_apps.probe import REDIS_URL, STAGE, TYPE, Probe
from jobtrack.integrations.celery import CeleryTracking

TASK = "bench.noop"
"""The trivial task's name."""
CALLBACK = "bench.chord_done"
"""The chord's callback's name."""


def chord_key(prefix: str) -> str:
    """The Redis key where the chord's callback records the time it ran."""
    return f"{prefix}chord"


@dataclass
class Setup:
    """The app's parts, built from one environment."""

    celery_app: Celery
    app: jobtrack.App
    tracking: CeleryTracking
    noop: Any
    chord_done: Any
    queue: str


def build(env: Mapping[str, str], *, worker: bool = False) -> Setup:
    """The Celery app, its tasks and the jobtrack tracking of ``env``; with
    ``worker`` and the mode ``tracked``, the tracking is installed.

    :raises KeyError: a variable of the module missing.
    """
    mode = env["JOBTRACK_BENCH_MODE"]
    queue = env["JOBTRACK_BENCH_QUEUE"]
    prefix = env["JOBTRACK_BENCH_PREFIX"]
    celery_app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
    celery_app.conf.update(
        task_default_queue=queue,
        task_ignore_result=mode != "chord",
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        result_expires=None,
    )
    probe = Probe(env)
    marks = redis.Redis.from_url(REDIS_URL)

    def noop(n: int) -> int:
        probe()
        return n

    def chord_done(results: list[int]) -> int:
        marks.set(chord_key(prefix), repr(time.time()))
        return len(results)

    noop_task = celery_app.task(name=TASK)(noop)
    callback = celery_app.task(name=CALLBACK)(chord_done)
    app = jobtrack.App(jobtrack.Settings.from_env(env))
    tracking = CeleryTracking(app, celery_app, queues=queue)
    tracking.job_type(TYPE, [STAGE])
    if worker and mode == "tracked":
        tracking.install()
    if worker:
        signals.worker_ready.connect(_ready, weak=False, dispatch_uid="bench-ready")
    return Setup(celery_app, app, tracking, noop_task, callback, queue)


READY = "bench worker ready"
"""What a worker prints once it consumes."""


def _ready(**_: Any) -> None:
    print(READY, flush=True)


_built: Setup | None = None


def setup() -> Setup:
    """The parts built from this process's environment (once), installed."""
    global _built  # noqa: PLW0603 - built on first use, not on import
    if _built is None:
        _built = build(os.environ, worker=True)
    return _built


def __getattr__(name: str) -> Any:
    """``celery_app``, ``app``, ``tracking``: the parts of :func:`setup`."""
    if name in {"celery_app", "app", "tracking"}:
        return getattr(setup(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
