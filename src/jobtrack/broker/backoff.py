"""Exponential backoff with jitter, for reconnecting to a broker.

Each wait doubles, up to ``maximum``, and is then spread by ``jitter``
(±20 % by default) so that many workers that lost one server do not all
come back in the same instant. psycopg_pool's reconnection does the same
(a doubling delay with a random share).
"""

from __future__ import annotations

import asyncio
import random as _random
from collections.abc import Awaitable, Callable

__all__ = ["Backoff"]


class Backoff:
    """Delays of ``initial * factor**n``, capped at ``maximum``, each times a
    random factor in ``[1 - jitter, 1 + jitter]``.

    :param random: a function returning a float in ``[0, 1)`` (tests inject one).
    :param sleep: the coroutine that waits (tests inject one).
    :raises ValueError: for a delay that is not positive, a ``factor`` below 1
        or a ``jitter`` outside ``[0, 1)``.
    """

    def __init__(
        self,
        *,
        initial: float = 0.1,
        maximum: float = 5.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < initial <= maximum, factor >= 1, 0 <= jitter < 1")
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self._random = random
        self.sleep = sleep
        self._base = initial

    def next_delay(self) -> float:
        """The next delay, in seconds; the one after it is ``factor`` times longer."""
        base = self._base
        self._base = min(base * self.factor, self.maximum)
        return base * (1 - self.jitter + 2 * self.jitter * self._random())

    async def wait(self) -> float:
        """Sleep for the next delay; return it."""
        delay = self.next_delay()
        await self.sleep(delay)
        return delay

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self._base = self.initial
