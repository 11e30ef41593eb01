"""The benchmark's arq app: ``python -m arq
bench.integrations_apps.arq_app.BareSettings`` (no tracking) or
``…TrackedSettings`` (jobtrack's wrapper), one process each; monitor:
``jobtrack monitor --app bench.integrations_apps.arq_app:app``.

arq's defaults but three: no results kept (``keep_result = 0``), a 5 s job
timeout, after which a killed worker's job is run again, and a 0.05 s
``poll_delay``. With arq's 0.5 s, a worker reads at most 100 job ids a poll
(its ``queue_read_limit``) and sleeps out the rest of the half second when
it has run them sooner, which an instant task always does: one worker over
a full queue ran 199 jobs/s, bare and tracked alike. Two workers then read
the same ids when their polls fall together, and apart when they do not,
and where each one's poll falls is set by when it started: the speed of a
run measured that, not the work. At 0.05 s the workers run as fast as the
machine lets them, as the other frameworks' workers do.
"""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings

import jobtrack
from bench.integrations_apps.probe import REDIS_URL, STAGE, TYPE, Probe
from jobtrack.integrations.arq import ArqTracking

QUEUE = os.environ.get("JOBTRACK_BENCH_QUEUE", "jobtrack-bench:arq")
JOB_TIMEOUT = 5
POLL_DELAY = 0.05

app = jobtrack.App()
tracking = ArqTracking(app, RedisSettings.from_dsn(REDIS_URL), queue_name=QUEUE)
tracking.job_type(TYPE, [STAGE])

_probe: Probe | None = None


async def noop(ctx: dict[Any, Any], n: int) -> int:
    """Count the end in the run's counter; ``n``."""
    global _probe  # noqa: PLW0603 - made on first use, in the worker
    if _probe is None:
        _probe = Probe(os.environ)
    await _probe.acount(ctx["redis"])
    return n


async def ready(ctx: dict[Any, Any]) -> None:
    """Say the worker is about to take jobs (the benchmark waits for it)."""
    print(f"arq worker ready pid={os.getpid()}", flush=True)


class BareSettings:
    """arq's settings of a worker that tracks nothing."""

    functions = [noop]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    queue_name = QUEUE
    keep_result = 0
    job_timeout = JOB_TIMEOUT
    poll_delay = POLL_DELAY
    on_startup = ready


@tracking.worker
class TrackedSettings:
    """arq's settings of a worker that counts its jobs with jobtrack."""

    functions = [noop]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    queue_name = QUEUE
    keep_result = 0
    job_timeout = JOB_TIMEOUT
    poll_delay = POLL_DELAY
    on_startup = ready
