"""The contract's app on Celery (see ``tests/integrations/contract.py``).

Workers: ``celery -A tests.integrations.apps.celery_app:celery_app worker
--pool prefork --concurrency 2 -Q $JOBTRACK_TEST_CELERY_QUEUE``; the
monitor: ``jobtrack monitor --app tests.integrations.apps.celery_app:app``.

The environment names the broker (``JOBTRACK_TEST_CELERY_BROKER``), the
queue (``JOBTRACK_TEST_CELERY_QUEUE``), on Redis the transport's key prefix
(``JOBTRACK_TEST_CELERY_KEYPREFIX``), the raw counter's Redis hash
(``JOBTRACK_TEST_RAW_KEY``) and whether counts are flushed before each ack
(``JOBTRACK_TEST_FLUSH_BEFORE_ACK=1``; else at the flush interval).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery  # type: ignore[import-untyped]
from celery.exceptions import Reject  # type: ignore[import-untyped]

import jobtrack
from jobtrack.integrations.celery import CeleryTracking

REDIS_URL = "redis://127.0.0.1:6379/0"
#: The raw counter's field in its hash.
RAW_FIELD = "ok"

QUEUE = os.environ.get("JOBTRACK_TEST_CELERY_QUEUE", "jobtrack-contract")


def make_celery(broker: str, queue: str, key_prefix: str = "") -> Celery:
    """The contract's Celery app on ``broker``: tasks in ``queue``, acked
    late and given back when their process is lost, one prefetched per
    process, no results, no remote control; on Redis, every key of the
    transport under ``key_prefix``."""
    made = Celery("contract", broker=broker)
    made.conf.update(
        task_default_queue=queue,
        task_acks_late=True,  # a task whose process is killed is delivered again
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
    )
    if key_prefix:
        made.conf.broker_transport_options = {"global_keyprefix": key_prefix}
    return made


celery_app = make_celery(
    os.environ.get("JOBTRACK_TEST_CELERY_BROKER", REDIS_URL),
    QUEUE,
    os.environ.get("JOBTRACK_TEST_CELERY_KEYPREFIX", ""),
)

app = jobtrack.App()
tracking = CeleryTracking(app, celery_app, queues=QUEUE)
tracking.job_type("contract", ["work"])
tracking.install(flush_before_ack=os.environ.get("JOBTRACK_TEST_FLUSH_BEFORE_ACK") == "1")

#: The raw counter's client (its connection pool reconnects in a forked process).
raw_counter = redis.Redis.from_url(REDIS_URL)


@celery_app.task(name="contract.ok", ignore_result=True)  # type: ignore[untyped-decorator]
def ok(n: int, pause: float) -> None:
    """Count a run in the raw counter, then sleep ``pause`` seconds."""
    raw_counter.hincrby(os.environ["JOBTRACK_TEST_RAW_KEY"], RAW_FIELD, 1)
    if pause:
        time.sleep(pause)


@celery_app.task(  # type: ignore[untyped-decorator]
    name="contract.fail",
    ignore_result=True,
    autoretry_for=(ValueError,),
    max_retries=2,
    retry_kwargs={"countdown": 0},
    retry_backoff=False,
    retry_jitter=False,
)
def fail(n: int) -> None:
    """Fail on every attempt (retried twice, then failed for good).

    :raises ValueError: always.
    """
    raise ValueError(f"task {n} failed")


@celery_app.task(name="contract.hang", ignore_result=True, time_limit=1)  # type: ignore[untyped-decorator]
def hang(n: int) -> None:
    """Sleep past the task's hard time limit (1 s): its process is killed."""
    time.sleep(60)


@celery_app.task(name="contract.reject", ignore_result=True)  # type: ignore[untyped-decorator]
def reject(n: int) -> None:
    """Reject the task's message for good.

    :raises Reject: always, not requeued.
    """
    raise Reject(f"task {n} rejected", requeue=False)
