"""The contract's app on RQ: the ``contract`` job type, whose items are RQ
jobs of the test's queue, the tasks ``ok`` and ``fail``, and the worker
class (``rq worker -w tests.integrations.apps.rq_app.Worker``), which
imports this module in the worker's main process, so its work horses
inherit it.

Environment: ``JOBTRACK_STORE_URL`` (the store), ``JOBTRACK_TEST_REDIS_URL``,
``JOBTRACK_TEST_RQ_QUEUE`` (the test's queue), ``JOBTRACK_TEST_RAW_KEY`` (the
raw counter, a Redis hash).
"""

from __future__ import annotations

import os
import time

from redis import Redis
from rq import Queue, Retry, get_current_job

import jobtrack
from jobtrack.integrations.rq import JobtrackWorker, RQTracking
from tests.integrations.contract import STAGE, TYPE

REDIS_URL = os.environ.get("JOBTRACK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("JOBTRACK_TEST_RQ_QUEUE", "jobtrack-contract")
RAW_KEY = os.environ.get("JOBTRACK_TEST_RAW_KEY", "jobtrack-contract-raw")
#: The raw counter's field.
RAN = "ran"


def hold_key(raw_key: str) -> str:
    """The key that has the next ``ok`` task hold still."""
    return f"{raw_key}:hold"


def held_key(raw_key: str) -> str:
    """The key the held task writes its pid to."""
    return f"{raw_key}:held"


#: Set by the test: the next ``ok`` task to claim it holds still (after
#: counting itself in the raw counter) and writes its pid to :data:`HELD_KEY`,
#: so that the test kills a work horse in the middle of a task.
HOLD_KEY = hold_key(RAW_KEY)
HELD_KEY = held_key(RAW_KEY)
#: Retries of every task: 3 attempts.
RETRY = Retry(max=2)
#: Seconds RQ keeps a job's hash and result after it ended.
KEEP = 600

redis = Redis.from_url(REDIS_URL)
queue = Queue(QUEUE, connection=redis)
app = jobtrack.App()
tracking = RQTracking(app, queue)
tracking.job_type(TYPE, [STAGE])


def ok(n: int, pause: float) -> int:
    """Count a run in the raw counter, sleep ``pause`` seconds; ``n``."""
    job = get_current_job()
    connection = redis if job is None else job.connection  # the work horse's own
    connection.hincrby(RAW_KEY, RAN, 1)
    if connection.delete(HOLD_KEY):
        connection.set(HELD_KEY, os.getpid())
        time.sleep(60)
    time.sleep(pause)
    return n


def fail(n: int) -> None:
    """Fail, every time.

    :raises ValueError: always.
    """
    raise ValueError(f"task {n} failed")


class Worker(JobtrackWorker):
    """RQ's forking worker, counting into :data:`app`'s store."""

    jobtrack_app = app
