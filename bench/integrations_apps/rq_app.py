"""The benchmark's RQ app: ``python -m rq.cli worker --url $REDIS --worker-class
bench.integrations_apps.rq_app.BareWorker`` (no tracking, RQ's forking
``Worker``) or ``…TrackedWorker`` (jobtrack's ``JobtrackWorker``), one
process each; monitor: ``jobtrack monitor --app
bench.integrations_apps.rq_app:app``.

RQ's defaults but one: the jobs' hashes and results are kept 60 s
(``result_ttl``), then expire.
"""

from __future__ import annotations

import os

from redis import Redis
from rq import Queue, Worker, get_current_job

import jobtrack
from bench.integrations_apps.probe import REDIS_URL, STAGE, TYPE, Probe
from jobtrack.integrations.rq import JobtrackWorker, RQTracking

QUEUE = os.environ.get("JOBTRACK_BENCH_QUEUE", "jobtrack-bench-rq")
KEEP = 60
"""Seconds RQ keeps a job's hash and result after it ended."""

redis = Redis.from_url(REDIS_URL)
queue = Queue(QUEUE, connection=redis)
app = jobtrack.App()
tracking = RQTracking(app, queue)
tracking.job_type(TYPE, [STAGE])

_probe: Probe | None = None


def noop(n: int) -> int:
    """Count the end in the run's counter (on the work horse's connection); ``n``."""
    global _probe  # noqa: PLW0603 - made on first use, in the work horse
    if _probe is None:
        _probe = Probe(os.environ)
    job = get_current_job()
    if job is not None:
        _probe.redis = job.connection
    _probe()
    return n


class BareWorker(Worker):
    """RQ's forking worker, tracking nothing."""


class TrackedWorker(JobtrackWorker):
    """RQ's forking worker, counting into :data:`app`'s store."""

    jobtrack_app = app
