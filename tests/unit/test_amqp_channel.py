"""Opening a channel on a connection the server closed is an outage, not a
bug; a broker that stopped on an error is said in one line at start."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import click
import pytest
from aio_pika.abc import AbstractConnection

from jobtrack.broker import rabbitmq
from jobtrack.broker.rabbitmq import _open_channel
from jobtrack.cli.options import preflight
from jobtrack.errors import BrokerError
from jobtrack.runtime import Settings


class ClosedByServer:
    """What aio-pika's connection looks like once the server closed it: its
    ``connected`` event cleared, ``is_closed`` still false (only our own
    close sets that), and aiormq's bare RuntimeError from ``channel()``.
    Until aio-pika is told, ``connected`` is still set and only aiormq's
    connection beneath (``transport.connection``) says it is closed."""

    def __init__(self, *, connected: bool, amqp_closed: bool = False) -> None:
        self.is_closed = False
        self.connected = asyncio.Event()
        if connected:
            self.connected.set()
        self.transport = SimpleNamespace(connection=SimpleNamespace(is_closed=amqp_closed))

    async def channel(self, **_: Any) -> Any:
        raise RuntimeError("<Connection: 'amqp://guest:******@127.0.0.1:5672/'> closed")


async def test_a_connection_the_server_closed_is_a_connection_error() -> None:
    connection = cast(AbstractConnection, ClosedByServer(connected=False))
    with pytest.raises(ConnectionError, match="the connection closed"):
        await _open_channel(connection, publisher_confirms=True)


async def test_a_connection_closed_before_aio_pika_is_told_is_a_connection_error() -> None:
    connection = cast(AbstractConnection, ClosedByServer(connected=True, amqp_closed=True))
    with pytest.raises(ConnectionError, match="the connection closed"):
        await _open_channel(connection, publisher_confirms=True)


async def test_a_runtime_error_on_a_live_connection_is_a_bug_and_raised_as_it_is() -> None:
    connection = cast(AbstractConnection, ClosedByServer(connected=True))
    with pytest.raises(RuntimeError, match="closed"):
        await _open_channel(connection, publisher_confirms=True)


def test_preflight_says_a_broker_error_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def stopped(self: rabbitmq.RabbitMQBroker, *, within: float = 30.0) -> None:
        raise BrokerError("the RabbitMQ connection stopped on an error: RuntimeError('x')")

    monkeypatch.setattr(rabbitmq.RabbitMQBroker, "connect", stopped)
    settings = Settings(
        data_dir=tmp_path, store_url="memory://", broker_url="amqp://guest:guest@127.0.0.1:5672/"
    )
    with pytest.raises(click.ClickException, match="stopped on an error"):
        preflight(settings)
