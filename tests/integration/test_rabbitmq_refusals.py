"""The RabbitMQ broker against the real server, where waiting cannot help:
a refused login or virtual host fails at once, a refused queue is reported
once and dropped, and a bug's RuntimeError is not taken for a lost connection.

Reconnections are forced with ``rabbitmqctl close_all_connections`` on this
module's own virtual host; the server is never restarted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from jobtrack.broker import Delivery
from jobtrack.broker.rabbitmq import BROKER_SETTING, RabbitMQBroker
from jobtrack.errors import BrokerError, ConfigurationError, QueueRefused
from tests.rabbitmq import rabbitmqctl, require_server, scratch_vhost, vhost_url

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    require_server()
    with scratch_vhost("refusals") as name:
        yield name


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port or 5672}"
    return urlunsplit(parts._replace(netloc=netloc))


def close_connections(vhost: str) -> None:
    rabbitmqctl("close_all_connections", "--vhost", vhost, "--limit", "100", "jobtrack test")


async def until(check: Any, within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 (state of the broker, not an event of ours)
            await asyncio.sleep(0.05)


class Bodies:
    """A handler that acks and keeps the bodies."""

    def __init__(self) -> None:
        self.bodies: asyncio.Queue[bytes] = asyncio.Queue()

    async def __call__(self, delivery: Delivery) -> None:
        await delivery.ack()
        self.bodies.put_nowait(delivery.body)


def spy_declarations(broker: RabbitMQBroker, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every queue ``broker`` declares from now on, in order."""
    declared: list[str] = []
    real = broker.declare

    async def declare(channel: AbstractChannel, queue: str) -> AbstractQueue:
        declared.append(queue)
        return await real(channel, queue)

    monkeypatch.setattr(broker, "declare", declare)
    return declared


async def refused(url: str) -> tuple[ConfigurationError, float]:
    """The configuration error connecting to ``url`` raises, and how long it took."""
    broker = RabbitMQBroker(url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(ConfigurationError) as caught:
            await broker.connect(within=10)
        took = loop.time() - started
        with pytest.raises(ConfigurationError):  # and to every later caller, at once
            await broker.publish("anything", b"x")
    finally:
        await broker.aclose()
    return caught.value, took


async def test_a_wrong_password_fails_at_once_naming_the_setting(vhost: str) -> None:
    error, took = await refused(with_password(vhost_url(vhost), "not-the-password"))
    assert took < 5
    assert error.setting == BROKER_SETTING
    text = str(error)
    assert text.startswith("RabbitMQ refused the login of user 'guest' at amqp://guest:***@")
    assert text.endswith("(check JOBTRACK_BROKER_URL / --broker)")
    assert "not-the-password" not in text


async def test_a_missing_virtual_host_fails_at_once(vhost: str) -> None:
    missing = f"jobtrack-missing-{uuid.uuid4().hex[:8]}"
    error, took = await refused(vhost_url(missing))
    assert took < 5
    assert f"refused virtual host {missing!r} to user 'guest'" in str(error)
    assert str(error).endswith("(check JOBTRACK_BROKER_URL / --broker)")


async def test_a_virtual_host_closed_to_the_user_fails_at_once() -> None:
    require_server()
    closed = f"jobtrack-closed-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", closed)  # no permissions for anyone
    try:
        error, took = await refused(vhost_url(closed))
    finally:
        rabbitmqctl("delete_vhost", closed)
    assert took < 5
    assert f"refused virtual host {closed!r}" in str(error)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("amqp://guest:secret@127.0.0.1:99999/", "bad port"),
        ("amqp://guest:secret@127.0.0.1:x/", "bad port"),
        ("http://guest:secret@127.0.0.1/", "not an AMQP URL"),
        ("amqp://guest:secret@127.0.0.1/?queue_type=lazy", "queue_type must be"),
        ("amqp://guest:secret@[::1/", "Invalid IPv6 URL"),
    ],
)
def test_a_url_that_cannot_work_is_refused_before_connecting(url: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why) as caught:
        RabbitMQBroker(url)
    assert "secret" not in str(caught.value)
    assert str(caught.value).endswith("(check JOBTRACK_BROKER_URL / --broker)")


async def test_a_refused_queue_is_reported_once_and_not_tried_at_each_reconnection(
    vhost: str, queue: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    classic = RabbitMQBroker(vhost_url(vhost, queue_type="classic"))
    await classic.publish(queue, b"declared classic")  # so a quorum declaration is refused
    await classic.aclose()
    broker = RabbitMQBroker(vhost_url(vhost))
    declared = spy_declarations(broker, monkeypatch)
    handler, other = Bodies(), f"{queue}-other"
    try:
        await broker.consume(other, handler, prefetch=1)
        with pytest.raises(BrokerError, match="exists with other settings"):
            await broker.consume(queue, handler, prefetch=1)
        for count in (2, 3):
            await asyncio.to_thread(close_connections, vhost)
            await until(lambda count=count: broker.connections == count)
        await broker.publish(other, b"after two reconnections")
        assert await asyncio.wait_for(handler.bodies.get(), 10) == b"after two reconnections"
        await asyncio.sleep(1.0)  # a loop of reconnections would show now
        assert broker.connections == 3
    finally:
        await broker.aclose()
    assert declared.count(queue) == 1
    assert declared.count(other) == 3


async def test_a_queue_refused_when_consumed_again_is_reported_once_and_dropped(
    vhost: str, queue: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broker = RabbitMQBroker(vhost_url(vhost))
    handler = Bodies()
    try:
        subscription = await broker.consume(queue, handler, prefetch=1)
        declared = spy_declarations(broker, monkeypatch)
        # Someone deletes the queue and declares it classic: the server cancels
        # our consumer, and declaring it again as a quorum queue is refused.
        connection = await aio_pika.connect(vhost_url(vhost))
        try:
            channel = await connection.channel()
            await channel.queue_delete(queue)
            await channel.declare_queue(queue, durable=True)
        finally:
            await connection.close()
        with caplog.at_level(logging.ERROR, logger="jobtrack.broker.rabbitmq"):
            await until(lambda: getattr(subscription, "refused", None) is not None)
            await asyncio.sleep(1.5)  # retries, if any, would come now
            await asyncio.to_thread(close_connections, vhost)
            await until(lambda: broker.connections == 2)
            await asyncio.sleep(0.5)
        assert isinstance(subscription.refused, QueueRefused)
        reports = [r for r in caplog.records if getattr(r, "action", "") == "consume_refused"]
        assert [r.getMessage().split(";")[0] for r in reports] == [
            f"RabbitMQ refused consuming {queue}"
        ]
        assert declared == [queue]
    finally:
        await broker.aclose()


async def test_a_runtime_error_in_publish_is_raised_at_once_not_retried(
    vhost: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = RabbitMQBroker(vhost_url(vhost), publish_timeout=10)
    try:
        await broker.publish(queue, b"fine")

        def buggy(*args: object, **kwargs: object) -> aio_pika.Message:
            raise RuntimeError("a bug building the message")

        monkeypatch.setattr(aio_pika, "Message", buggy)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RuntimeError, match="a bug building the message"):
            await broker.publish(queue, b"never sent")
        assert loop.time() - started < 2
    finally:
        await broker.aclose()


async def test_a_runtime_error_setting_up_a_subscription_is_raised(
    vhost: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = RabbitMQBroker(vhost_url(vhost))

    async def buggy(channel: AbstractChannel, name: str) -> AbstractQueue:
        raise RuntimeError("a bug in the setup")

    monkeypatch.setattr(broker, "declare", buggy)
    try:
        with pytest.raises(RuntimeError, match="a bug in the setup"):
            await broker.consume(queue, Bodies(), prefetch=1)
    finally:
        await broker.aclose()


async def test_a_runtime_error_setting_up_after_a_reconnection_surfaces(
    vhost: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = RabbitMQBroker(vhost_url(vhost), publish_timeout=10)
    try:
        await broker.consume(queue, Bodies(), prefetch=1)

        async def buggy(channel: AbstractChannel, name: str) -> AbstractQueue:
            raise RuntimeError("a bug in the setup")

        monkeypatch.setattr(broker, "declare", buggy)
        await asyncio.to_thread(close_connections, vhost)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RuntimeError, match="a bug in the setup"):
            await broker.publish(f"{queue}-other", b"x")
        assert loop.time() - started < 5
    finally:
        await broker.aclose()
