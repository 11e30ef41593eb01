"""Receipts: what became of one reported item.

A receipt resolves once the item's fate is known: durable in the store;
refused by the store for good (with the store's reason: an unknown job or
stage, text no engine stores, counts out of bounds), which no retry can
mend; or not written (dropped past the tracker's bound, or still unwritten
when the tracker closed), which the monitor's reconciliation makes up for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

__all__ = ["Outcome", "Receipt"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The fate of an item: ``durable`` once stored; ``refused`` is the
    store's reason when it refused the item for good (never durable).

    ``done`` and ``failed`` are the items the store counted for the
    receipt: all the items that share it (the items of one stage folded into
    one write share one receipt), without those it had counted already (a
    key counted before) or refused. Only a write that mixes done and failed
    keys some of which were counted before splits them by estimate (the
    known repeats, a key reported both ways, from the failed; the rest from
    the done first); their sum is exact.
    """

    durable: bool
    refused: str | None = None
    done: int = 0
    failed: int = 0

    @classmethod
    def refusal(cls, reason: str) -> Outcome:
        """An item the store refused for good, and why."""
        return cls(durable=False, refused=reason)


DURABLE = Outcome(durable=True)
NOT_WRITTEN = Outcome(durable=False)


class Receipt:
    """Resolves to True once an item's progress is durable in the store, or
    to False when it was refused or dropped; :attr:`refused` then tells a
    refusal (the store's reason) from a drop (None). Await it, or
    :meth:`wait`."""

    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future[Outcome]) -> None:
        self._future = future

    @classmethod
    def settled(cls, outcome: Outcome) -> Receipt:
        """A receipt whose outcome is known already; needs a running loop."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        future.set_result(outcome)
        return cls(future)

    @classmethod
    def resolved(cls, durable: bool) -> Receipt:
        """A receipt already settled, durable or not written."""
        return cls.settled(DURABLE if durable else NOT_WRITTEN)

    @classmethod
    def refusal(cls, reason: str) -> Receipt:
        """A receipt for an item refused for good, with the reason."""
        return cls.settled(Outcome.refusal(reason))

    def watches(self, future: asyncio.Future[Outcome]) -> bool:
        """Whether this receipt resolves with ``future``."""
        return self._future is future

    def done(self) -> bool:
        """Whether the outcome is known."""
        return self._future.done()

    @property
    def refused(self) -> str | None:
        """Why the store refused the item for good; None while the outcome is
        unknown, and when the item is durable or was merely not written."""
        if not self._future.done() or self._future.cancelled():
            return None
        return self._future.result().refused

    @property
    def ident(self) -> int:
        """The same for every receipt of the same items (one write's fold)."""
        return id(self._future)

    def when_known(self, callback: Callable[[Outcome], None]) -> None:
        """Call ``callback(outcome)`` once the outcome is known (soon, on
        the loop, if it is known already); a cancelled wait is told as not
        written."""

        def known(future: asyncio.Future[Outcome]) -> None:
            callback(NOT_WRITTEN if future.cancelled() else future.result())

        self._future.add_done_callback(known)

    def add_done_callback(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(durable)`` once the outcome is known."""
        self._future.add_done_callback(lambda future: callback(future.result().durable))

    async def wait(self, within: float | None = None) -> bool:
        """Whether the item is durable; False if that is not known within
        ``within`` seconds."""
        try:
            return (await asyncio.wait_for(asyncio.shield(self._future), within)).durable
        except TimeoutError:
            return False

    async def _durable(self) -> bool:
        return (await asyncio.shield(self._future)).durable

    def __await__(self) -> Generator[Any, None, bool]:
        return self._durable().__await__()
