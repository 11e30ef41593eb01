"""Merged acks: a ``basic.ack(multiple=True)`` covers only deliveries that
were settled, whatever order their handlers start or end in."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from jobtrack.broker.rabbitmq import _Acks


class Channel:
    is_closed = False


class Message:
    """A delivery that records the acks sent for it as (tag, multiple)."""

    def __init__(self, tag: int, sent: list[tuple[int, bool]]) -> None:
        self.delivery_tag = tag
        self._sent = sent

    async def ack(self, multiple: bool = False) -> None:
        self._sent.append((self.delivery_tag, multiple))


def setup() -> tuple[_Acks, list[tuple[int, bool]], Any]:
    sent: list[tuple[int, bool]] = []
    acks = _Acks(cast(AbstractChannel, Channel()))

    def message(tag: int) -> AbstractIncomingMessage:
        return cast(AbstractIncomingMessage, Message(tag, sent))

    return acks, sent, message


async def test_a_run_of_acks_from_the_first_tag_goes_as_one() -> None:
    acks, sent, message = setup()
    for tag in (3, 1, 2):
        acks.ack(message(tag))
    await acks.flush()
    assert sent == [(3, True)]


async def test_an_ack_ahead_of_a_delivery_not_settled_goes_alone() -> None:
    # Delivery 1's handler has not even started (its task not yet run): the
    # ack of 2 must not cover it.
    acks, sent, message = setup()
    acks.ack(message(2))
    await acks.flush()
    assert sent == [(2, False)]
    acks.ack(message(1))  # 1, then 2 already sent alone: one ack of 1
    await acks.flush()
    assert sent == [(2, False), (1, True)]
    acks.ack(message(3))
    await acks.flush()
    assert sent == [(2, False), (1, True), (3, True)]


async def test_a_reject_passes_a_run_but_is_never_acked() -> None:
    acks, sent, message = setup()
    acks.ack(message(1))
    acks.settled(message(2))  # rejected on its own
    acks.ack(message(4))  # 3 still being handled
    await acks.flush()
    assert sent == [(1, True), (4, False)]
    acks.ack(message(3))
    acks.settled(message(5))
    acks.ack(message(6))
    await acks.flush()
    assert sent == [(1, True), (4, False), (6, True)]


async def test_the_acks_wait_for_the_end_of_the_loops_turn() -> None:
    acks, sent, message = setup()
    acks.ack(message(1))
    assert sent == []
    acks.ack(message(2))
    await asyncio.sleep(0)  # _send runs
    await asyncio.sleep(0)  # the ack's send runs
    assert sent == [(2, True)]


async def test_a_closed_channel_sends_nothing() -> None:
    acks, sent, message = setup()
    acks.ack(message(1))
    acks.channel.is_closed = True  # type: ignore[misc]
    await acks.flush()
    assert sent == []
