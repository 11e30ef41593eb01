"""The soak's app: ``jobtrack worker --app tests.soak.app:app``.

Job type ``soak``, one stage ``work``: each item does nothing but record
that it ran, in the truth table of ``$JOBTRACK_SOAK_TRUTH_URL`` (one row
per job and key, with the number of times it ran and when it first and
last did), so that the soak can tell, at the end, items done more than
once (allowed: a worker killed between its work and its ack), items lost
and items counted twice (neither allowed). A handler that cannot reach
the truth database raises :class:`ConnectionError`, which the type tries
again.

The collection scan is registered too, so that one app serves the monitor
and the server for both kinds of job (its workers are started with
``--stage thumbnail --stage cache``).
"""

from __future__ import annotations

import asyncio
import os

import psycopg
from psycopg_pool import AsyncConnectionPool

from jobtrack.jobs import Item
from jobtrack.runtime import App
from jobtrack.runtime.builtin import collection_scan_type

__all__ = ["JOB_TYPE", "STAGE", "TRUTH_ENV", "TRUTH_SCHEMA", "app", "work"]

#: The soak's job type and its one stage.
JOB_TYPE = "soak"
STAGE = "work"
#: The environment variable naming the truth database.
TRUTH_ENV = "JOBTRACK_SOAK_TRUTH_URL"
#: The truth table (made by the runner before any worker starts).
TRUTH_SCHEMA = """
CREATE TABLE IF NOT EXISTS soak_effects (
    job_id text NOT NULL,
    key text NOT NULL,
    executions integer NOT NULL,
    first_at timestamptz NOT NULL,
    last_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, key)
)
"""
_RECORD = """
INSERT INTO soak_effects (job_id, key, executions, first_at, last_at)
VALUES (%s, %s, 1, clock_timestamp(), clock_timestamp())
ON CONFLICT (job_id, key) DO UPDATE
SET executions = soak_effects.executions + 1, last_at = clock_timestamp()
"""

app = App()
soak = app.job_type(
    JOB_TYPE, [STAGE], retry_on=[ConnectionError], max_attempts=50, backoff=0.2, max_backoff=2.0
)
app.register(collection_scan_type())

_POOLS: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = {}


async def _pool() -> AsyncConnectionPool:
    loop = asyncio.get_running_loop()
    pool = _POOLS.get(loop)
    if pool is None:
        pool = AsyncConnectionPool(
            os.environ[TRUTH_ENV],
            min_size=1,
            max_size=4,
            open=False,
            timeout=5,
            check=AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": 3},
        )
        _POOLS[loop] = pool
        await pool.open()
    return pool


@soak.handler(STAGE)
async def work(item: Item) -> None:
    """Record that the item ran (its only side effect).

    :raises ConnectionError: the truth database cannot be reached (tried again).
    """
    try:
        pool = await _pool()
        async with pool.connection() as conn:
            await conn.execute(_RECORD, (item.job.id, item.key))
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise ConnectionError(f"truth database: {exc}") from exc
    except TimeoutError as exc:  # the pool's wait for a connection
        raise ConnectionError(f"truth database: {exc}") from exc
