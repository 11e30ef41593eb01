"""The broker setting as a list of nodes: parsing, masking, and the
supervisor's round robin over the nodes."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobtrack.broker.backoff import Backoff
from jobtrack.broker.rabbitmq import (
    BROKER_SETTING,
    BrokerNodes,
    RabbitMQBroker,
    parse_amqp_urls,
    split_broker_urls,
)
from jobtrack.errors import ConfigurationError, masked_url


@pytest.mark.parametrize(
    ("value", "urls"),
    [
        ("amqp://mq1/", ["amqp://mq1/"]),
        ("amqp://mq1/,amqp://mq2/", ["amqp://mq1/", "amqp://mq2/"]),
        (" amqp://mq1/ , amqps://mq2:5671/x ", ["amqp://mq1/", "amqps://mq2:5671/x"]),
        ("amqp://mq1/,AMQP://mq2/", ["amqp://mq1/", "AMQP://mq2/"]),
        # A comma not followed by a new URL stays where it is: a password's.
        ("amqp://app:a,b@mq1/,amqp://app:a,b@mq2/", ["amqp://app:a,b@mq1/", "amqp://app:a,b@mq2/"]),
        ("amqp://mq1/,", ["amqp://mq1/,"]),
    ],
)
def test_a_setting_is_split_where_a_new_url_starts(value: str, urls: list[str]) -> None:
    assert split_broker_urls(value) == urls


def test_each_url_is_parsed_and_the_options_are_shared() -> None:
    nodes = parse_amqp_urls(
        "amqp://app:pw@mq1:5701/jobs?queue_type=quorum&delivery_limit=5&heartbeat=7,"
        "amqp://app:pw@mq2:5702/jobs?delivery_limit=5"
    )
    assert nodes == BrokerNodes(
        ("amqp://app:pw@mq1:5701/jobs?heartbeat=7", "amqp://app:pw@mq2:5702/jobs"),
        "quorum",
        5,
    )


@pytest.mark.parametrize(
    ("value", "option"),
    [
        ("amqp://mq1/?queue_type=classic,amqp://mq2/", "queue_type"),
        ("amqp://mq1/?queue_type=classic,amqp://mq2/?queue_type=quorum", "queue_type"),
        ("amqp://mq1/?delivery_limit=3,amqp://mq2/", "delivery_limit"),
        ("amqp://mq1/,amqp://mq2/,amqp://mq3/?delivery_limit=21", "delivery_limit"),
    ],
)
def test_urls_that_disagree_on_an_option_are_refused_naming_it(value: str, option: str) -> None:
    with pytest.raises(ConfigurationError, match=f"disagree on {option}") as refused:
        parse_amqp_urls(value)
    assert refused.value.setting == BROKER_SETTING


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "not an AMQP URL"),
        ("amqp://mq1/,", "a comma or a space after the login"),
        ("amqp://mq1,mq2/", "a comma or a space after the login"),
        ("amqp://mq1/,,amqp://mq2/", "a comma or a space after the login"),
        ("amqp://mq1/,memory://", "a comma or a space after the login"),
        ("memory://,amqp://mq1/", "not an AMQP URL"),
        ("amqp://mq1/,amqp://", "no host"),
        ("amqp://mq1/,amqp://mq2:99999/", "bad port"),
        ("amqp://mq1/jobs,x", "a comma or a space after the login"),
        ("amqp://mq1/?heartbeat=5,", "a comma or a space after the login"),
    ],
)
def test_a_bad_list_is_a_configuration_error(value: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why) as refused:
        RabbitMQBroker(value)
    assert refused.value.setting == BROKER_SETTING


def test_no_password_of_a_list_shows_in_its_errors_or_repr() -> None:
    value = "amqp://app:s3cret@mq1/?queue_type=classic,amqp://app:t0ps3cret@mq2/"
    with pytest.raises(ConfigurationError) as refused:
        parse_amqp_urls(value)
    assert "s3cret" not in str(refused.value)
    assert "amqp://app:***@mq1/?queue_type=classic,amqp://app:***@mq2/" in str(refused.value)
    broker = RabbitMQBroker("amqp://app:s3cret@mq1/,amqp://app:t0ps3cret@mq2/")
    assert repr(broker) == "RabbitMQBroker('amqp://app:***@mq1/,amqp://app:***@mq2/')"
    assert broker.node == "amqp://app:***@mq1/"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("amqp://a:p1@mq1/,amqp://b:p2@mq2/", "amqp://a:***@mq1/,amqp://b:***@mq2/"),
        ("amqp://a:p,1@mq1/, amqps://b:p2@mq2/", "amqp://a:***@mq1/,amqps://b:***@mq2/"),
        ("amqp://a@mq1/,amqp://mq2/", "amqp://a@mq1/,amqp://mq2/"),
    ],
)
def test_a_list_of_urls_is_masked_url_by_url(value: str, shown: str) -> None:
    assert masked_url(value) == shown


@given(st.text())
def test_any_setting_is_a_list_of_nodes_or_a_configuration_error(value: str) -> None:
    try:
        nodes = parse_amqp_urls(value)
    except ConfigurationError as refused:
        setting = refused.setting
        assert setting == BROKER_SETTING
        return
    assert len(nodes.urls) == len(split_broker_urls(value)) >= 1
    assert nodes.queue_type in ("quorum", "classic")
    assert nodes.delivery_limit >= 1
    for url in nodes.urls:
        parts = urlsplit(url)
        assert parts.scheme in ("amqp", "amqps")
        assert parts.hostname
        assert "," not in parts.hostname


hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True)
passwords = st.text(st.sampled_from("abcXYZ019,;:!$&'()*+=-._~ "), max_size=12)


@given(st.lists(st.tuples(hosts, st.integers(1, 65535), passwords), min_size=1, max_size=5))
def test_urls_joined_with_commas_come_back_in_order(
    nodes: list[tuple[str, int, str]],
) -> None:
    urls = [f"amqp://app:{password}@{host}:{port}/jobs" for host, port, password in nodes]
    parsed = parse_amqp_urls(",".join(urls))
    assert [urlsplit(url)[:3] for url in parsed.urls] == [urlsplit(url)[:3] for url in urls]


class _Connection:
    """A connection that works until :meth:`drop` (the server's node gone)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.close_callbacks: set[Any] = set()
        self.is_closed = False
        self.connected = asyncio.Event()
        self.connected.set()

    async def channel(self, *, publisher_confirms: bool) -> object:
        return object()

    def drop(self) -> None:
        self.is_closed = True
        self.connected.clear()
        for callback in list(self.close_callbacks):
            callback(self, ConnectionResetError("node gone"))

    async def close(self) -> None:
        self.is_closed = True


async def test_the_supervisor_goes_round_the_nodes_and_backs_off_per_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three nodes, two of them down: each attempt moves to the next node
    at once, and the backoff waits only after a whole round failed; a
    connection lost moves to the next node."""
    up = {"mq3"}
    attempts: list[str] = []
    made: list[_Connection] = []

    async def connect(url: str, **kwargs: object) -> _Connection:
        host = urlsplit(url).hostname or ""
        attempts.append(host)
        if host not in up:
            raise ConnectionRefusedError(f"{host} is down")
        made.append(_Connection(url))
        return made[-1]

    monkeypatch.setattr(aio_pika, "connect", connect)
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(round(delay, 4))
        await asyncio.sleep(0.01)

    broker = RabbitMQBroker(
        "amqp://g:g@mq1/,amqp://g:g@mq2/,amqp://g:g@mq3/",
        backoff=lambda: Backoff(initial=0.1, maximum=1.0, random=lambda: 0.5, sleep=sleep),
    )
    try:
        await broker.connect(within=5)
        assert (attempts, waits, broker.node) == (["mq1", "mq2", "mq3"], [], "amqp://g:***@mq3/")
        up = {"mq2"}  # mq3 dies; mq1 stays down
        made[-1].drop()
        deadline = asyncio.get_running_loop().time() + 5
        while broker.connections < 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        # After a connection that did not hold, one backoff delay; then mq1
        # (down), then mq2 at once.
        assert attempts[3:] == ["mq1", "mq2"]
        assert waits == [0.1]
        assert broker.node == "amqp://g:***@mq2/"
        up = set()
        made[-1].drop()
        await asyncio.sleep(0.3)
        # Every node down: a delay after each round of three attempts.
        rounds = len(attempts[5:]) // 3
        assert rounds >= 1
        assert attempts[5:8] == ["mq3", "mq1", "mq2"]
        assert len(waits) - 2 == rounds
    finally:
        await broker.aclose()
