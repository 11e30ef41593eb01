"""What every benchmark task does: one Redis ``INCR`` of the run's counter;
the task that brings it to the run's size also records its end time."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import redis

REDIS_URL = os.environ.get("JOBTRACK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TYPE = "bench-integrations"
"""The jobtrack job type of the tracked runs."""
STAGE = "run"
"""Its one stage."""


def count_key(prefix: str) -> str:
    """The Redis key counting the run's task ends."""
    return f"{prefix}count"


def end_key(prefix: str) -> str:
    """The Redis key holding the time (``time.time()``) the last task ended."""
    return f"{prefix}end"


class Probe:
    """Counts a task's end in Redis (see the module).

    :param env: the worker's environment (``JOBTRACK_BENCH_PREFIX`` and
        ``JOBTRACK_BENCH_ITEMS``).
    :raises KeyError: either variable missing.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        prefix = env["JOBTRACK_BENCH_PREFIX"]
        self.items = int(env["JOBTRACK_BENCH_ITEMS"])
        self.count_key = count_key(prefix)
        self.end_key = end_key(prefix)
        self.redis = redis.Redis.from_url(REDIS_URL)

    def __call__(self) -> int:
        """Count one end; the count (the last task records its end time).

        :raises redis.RedisError: Redis cannot be reached.
        """
        count = int(self.redis.incr(self.count_key))
        if count == self.items:
            self.redis.set(self.end_key, repr(time.time()))
        return count

    async def acount(self, client: redis.asyncio.Redis) -> int:
        """:meth:`__call__` on an asyncio client (arq's own connection).

        :raises redis.RedisError: Redis cannot be reached.
        """
        count = int(await client.incr(self.count_key))
        if count == self.items:
            await client.set(self.end_key, repr(time.time()))
        return count
