"""Reconnection backoff: exponential, capped, with jitter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

from jobtrack.broker.backoff import Backoff
from jobtrack.broker.rabbitmq import RabbitMQBroker
from jobtrack.errors import BrokerUnavailable


def randoms(*values: float) -> Iterator[float]:
    """The given values, then 0.5 (no jitter) forever."""
    yield from values
    while True:
        yield 0.5


def test_delays_double_up_to_the_ceiling_and_are_spread_by_the_jitter() -> None:
    draws = randoms(0.0, 0.5, 0.75, 0.5, 0.25, 0.5, 0.999)
    backoff = Backoff(initial=0.1, maximum=1.0, jitter=0.2, random=lambda: next(draws))
    delays = [round(backoff.next_delay(), 4) for _ in range(7)]
    # bases 0.1 0.2 0.4 0.8 1.0 1.0 1.0, times 1 - 0.2 + 0.4 * random
    assert delays == [0.08, 0.2, 0.44, 0.8, 0.9, 1.0, 1.1996]


def test_reset_starts_again_from_the_first_delay() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


@pytest.mark.parametrize(
    ("initial", "maximum", "factor", "jitter"),
    [(0, 5, 2, 0.2), (2, 1, 2, 0.2), (0.1, 5, 0.5, 0.2), (0.1, 5, 2, 1.0)],
)
def test_nonsense_is_refused(initial: float, maximum: float, factor: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(initial=initial, maximum=maximum, factor=factor, jitter=jitter)


async def test_the_broker_reconnects_with_exponential_backoff_and_jitter() -> None:
    """Against a port where nothing listens: each failed attempt waits the
    next delay of the broker's backoff, drawn with the injected random."""
    waits: list[float] = []
    enough = asyncio.Event()

    async def sleep(delay: float) -> None:
        waits.append(round(delay, 4))
        if len(waits) == 6:
            enough.set()
        await asyncio.sleep(0)

    draws = randoms(0.0, 1.0 - 1e-9, 0.5, 0.0, 0.25)
    broker = RabbitMQBroker(
        "amqp://guest:guest@127.0.0.1:1/",
        backoff=lambda: Backoff(
            initial=0.1, maximum=1.0, jitter=0.2, random=lambda: next(draws), sleep=sleep
        ),
    )
    try:
        with pytest.raises(BrokerUnavailable):
            await broker.connect(within=0.01)
        await asyncio.wait_for(enough.wait(), 20)
    finally:
        await broker.aclose()
    assert waits[:6] == [0.08, 0.24, 0.4, 0.64, 0.9, 1.0]


class _FlappingConnection:
    """A connection that the server closes as soon as it is set up."""

    def __init__(self) -> None:
        self.close_callbacks: set[Any] = set()
        self.is_closed = False

    async def channel(self, *, publisher_confirms: bool) -> object:
        asyncio.get_running_loop().call_soon(self._drop)
        return object()

    def _drop(self) -> None:
        self.is_closed = True
        for callback in list(self.close_callbacks):
            callback(self, ConnectionResetError("dropped"))

    async def close(self) -> None:
        self.is_closed = True


async def test_a_connection_that_keeps_dropping_is_made_again_with_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connections that drop as soon as they are made are not made again in
    a tight loop: each one waits the next delay of the backoff."""
    made: list[_FlappingConnection] = []

    async def connect(url: str, **kwargs: object) -> _FlappingConnection:
        made.append(_FlappingConnection())
        return made[-1]

    monkeypatch.setattr(aio_pika, "connect", connect)
    waits: list[float] = []
    enough = asyncio.Event()

    async def sleep(delay: float) -> None:
        waits.append(round(delay, 4))
        if len(waits) == 5:
            enough.set()
            await asyncio.Event().wait()  # until the broker closes
        await asyncio.sleep(0)

    broker = RabbitMQBroker(
        "amqp://guest:guest@127.0.0.1:5672/",
        backoff=lambda: Backoff(initial=0.1, maximum=1.0, random=lambda: 0.5, sleep=sleep),
    )
    try:
        with contextlib.suppress(BrokerUnavailable):  # up for no time at all, again and again
            await broker.connect(within=0.01)
        await asyncio.wait_for(enough.wait(), 5)
    finally:
        await broker.aclose()
    assert waits[:5] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert len(made) == 5
