"""The contract's arq app: the ``contract`` job type, its functions ``ok``
and ``fail``, and the worker settings that count them
(``python -m arq tests.integrations.apps.arq_app.WorkerSettings``).

Its environment names the Redis (``JOBTRACK_TEST_REDIS_URL``), the arq
queue of the test (``JOBTRACK_TEST_ARQ_QUEUE``) and the raw counter's key
(``JOBTRACK_TEST_RAW_KEY``); the store comes from ``JOBTRACK_STORE_URL``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Retry

import jobtrack
from jobtrack.integrations.arq import ArqTracking

REDIS_URL = os.environ.get("JOBTRACK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("JOBTRACK_TEST_ARQ_QUEUE", "jobtrack-test:arq:queue")
RAW_KEY = os.environ.get("JOBTRACK_TEST_RAW_KEY", "jobtrack-test:arq:raw")
#: Tries of a job (arq's ``max_tries``): ``fail`` fails on the last.
TRIES = 3

app = jobtrack.App()
tracking = ArqTracking(app, RedisSettings.from_dsn(REDIS_URL), queue_name=QUEUE)
tracking.job_type("contract", ["work"])


async def ok(ctx: dict[Any, Any], n: int, pause: float = 0.0) -> int:
    """Count a run in the raw counter, wait ``pause`` seconds; ``n``."""
    await ctx["redis"].hincrby(RAW_KEY, "ok", 1)
    if pause:
        await asyncio.sleep(pause)
    return n


async def fail(ctx: dict[Any, Any], n: int) -> None:
    """Fail every try: retried (arq's :class:`~arq.worker.Retry`, no
    delay) until the last try, which raises the error itself.

    :raises Retry: before the last try.
    :raises ValueError: on the last try.
    """
    try:
        raise ValueError(f"task {n} failed")
    except ValueError as exc:
        if int(ctx["job_try"]) < TRIES:
            raise Retry(defer=0) from exc
        raise


async def ready(ctx: dict[Any, Any]) -> None:
    """Say the worker is about to take jobs (the driver waits for it)."""
    print(f"arq worker ready pid={os.getpid()}", flush=True)


@tracking.worker
class WorkerSettings:
    """arq's settings for the contract's workers."""

    functions = [ok, fail]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    queue_name = QUEUE
    max_tries = TRIES
    max_jobs = 20
    poll_delay = 0.05
    # A killed worker's jobs run again once their in-progress key expires:
    # the job timeout plus 10 s.
    job_timeout = 5
    keep_result = 600
    on_startup = ready
