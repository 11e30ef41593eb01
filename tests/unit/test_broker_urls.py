"""The broker setting as a list of nodes: parsing, masking, and the
supervisor's round robin over the nodes."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiormq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobtrack.broker import open_broker, rabbitmq
from jobtrack.broker.backoff import Backoff
from jobtrack.broker.rabbitmq import (
    BROKER_SETTING,
    BrokerNodes,
    RabbitMQBroker,
    parse_amqp_urls,
    split_broker_urls,
)
from jobtrack.errors import BrokerUnavailable, ConfigurationError, InvalidRequest, masked_url


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
        ("amqp://mq1/,", "a comma at the end"),
        ("amqp://mq1,mq2/", "a comma in the host"),
        ("amqp://mq1/,,amqp://mq2/", "a comma at the end"),
        ("amqp://mq1/,memory://", "another URL inside this one"),
        ("memory://,amqp://mq1/", "not an AMQP URL"),
        ("amqp://mq1/,amqp://", "no host"),
        ("amqp://mq1/,amqp://mq2:99999/", "bad port"),
        ("amqp://mq1/?heartbeat=5,", "a comma at the end"),
        ("amqp://mq1/amqp://mq2/", "another URL inside this one"),
        ("amqp://mq1/?next=amqp://mq2/", "another URL inside this one"),
        ("amqp://mq1/ amqp://mq2/", "a space or control character"),
        ("amqp://mq1/\namqp://mq2/", "a space or control character"),
        ("amqp://mq1/\tamqp://mq2/", "a space or control character"),
        ("amqp://mq 1/", "a space or control character"),
        ("amqp://mq1/\x00", "a space or control character"),
    ],
)
def test_a_bad_list_is_a_configuration_error(value: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why) as refused:
        RabbitMQBroker(value)
    assert refused.value.setting == BROKER_SETTING


@pytest.mark.parametrize(
    ("value", "urls"),
    [
        # One URL, as taken before lists: a comma not followed by a new URL
        # stays in its virtual host or option.
        ("amqp://u:p@h/a,b", ("amqp://u:p@h/a,b",)),
        ("amqp://u:p@h/?name=worker,1", ("amqp://u:p@h/?name=worker%2C1",)),
        ("amqp://u:p,q@h/a,b,amqp://u:p,q@h2/c,d", ("amqp://u:p,q@h/a,b", "amqp://u:p,q@h2/c,d")),
    ],
)
def test_a_comma_inside_a_url_stays_in_it(value: str, urls: tuple[str, ...]) -> None:
    assert parse_amqp_urls(value).urls == urls


@pytest.mark.parametrize("separator", ["\n", "\t", " ", "\r\n", " \n "])
def test_urls_separated_by_spaces_or_newlines_are_refused_both_passwords_masked(
    separator: str,
) -> None:
    """urlsplit drops tabs and newlines: two URLs on two lines would read as
    one node whose virtual host is the second URL, its password in clear."""
    value = f"amqp://u:p1secret@h1/{separator}amqp://u:p2secret@h2/"
    with pytest.raises(ConfigurationError, match="a space or control character") as refused:
        RabbitMQBroker(value)
    assert "p1secret" not in str(refused.value)
    assert "p2secret" not in str(refused.value)
    assert f"amqp://u:***@h1/{separator}amqp://u:***@h2/" in str(refused.value)


@pytest.mark.parametrize(
    "value", ["amqp://u:pa/ss@h/", "amqp://u:pa?ss@h/", "amqp://u:pa#ss@h/", "amqp://u:pa/s@s@h/"]
)
def test_a_password_with_an_unencoded_slash_is_masked_and_not_repeated(value: str) -> None:
    assert masked_url(value) == "amqp://u:***@h/"
    with pytest.raises(ConfigurationError) as refused:
        RabbitMQBroker(value)
    assert str(refused.value) == (
        "bad broker URL amqp://u:***@h/: bad port (not a whole number from 1 to 65535;"
        " a / ? # or @ in a password is written %2F %3F %23 %40)"
        " (check JOBTRACK_BROKER_URL / --broker)"
    )


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
        ("amqp://a:p1@mq1/\namqp://b:p2@mq2/", "amqp://a:***@mq1/\namqp://b:***@mq2/"),
        ("amqp://a:p/1@mq1/,amqp://b:p?2@mq2/", "amqp://a:***@mq1/,amqp://b:***@mq2/"),
        ("amqp://mq1:5672/\tamqp://b:p2@mq2/", "amqp://mq1:5672/\tamqp://b:***@mq2/"),
        ("amqp://a:p 1@mq1/ amqp://b:p\t2@mq2/", "amqp://a:***@mq1/ amqp://b:***@mq2/"),
        ("amqp://a:p1@mq1/amqp://b:p2@mq2/", "amqp://a:***@mq2/"),
    ],
)
def test_a_list_of_urls_is_masked_url_by_url(value: str, shown: str) -> None:
    assert masked_url(value) == shown


# Pieces of broker settings, so that the text is often nearly a list of URLs.
FRAGMENTS = [
    "amqp://",
    "amqps://",
    "AMQP://",
    ",",
    ", ",
    "@",
    ":",
    "/",
    "%2F",
    "?",
    "&",
    "=",
    "[",
    "]",
    "::1",
    "guest",
    "mq1",
    "127.0.0.1",
    "5672",
    "99999",
    "0",
    "queue_type=classic",
    "queue_type=quorum",
    "queue_type=stream",
    "delivery_limit=3",
    "delivery_limit=-1",
    "heartbeat=5",
    "memory://",
    "://",
    " ",
    "\n",
    "\t",
    "\x00",
    "\u00fc",
]
settings_text = st.one_of(
    st.text(),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=16).map("".join),
)


@given(settings_text)
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
        assert url.count("://") == 1
        assert not any(c.isspace() or ord(c) < 32 for c in url)


hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True)
passwords = st.text(st.sampled_from("abcXYZ019,;:!$&'()*+=-._~ /?#@%"), max_size=12)


@given(st.lists(st.tuples(hosts, st.integers(1, 65535), passwords), min_size=1, max_size=5))
def test_urls_joined_with_commas_come_back_in_order(
    nodes: list[tuple[str, int, str]],
) -> None:
    """Passwords percent-encoded where a URL needs it (``/ ? # @ %`` and
    spaces) come back as they were, in order, and never show masked."""
    urls = [
        f"amqp://app:{quote(password, safe=',;:!$&()*+=-._~')}@{host}:{port}/jobs"
        for host, port, password in nodes
    ]
    value = ",".join(urls)
    parsed = parse_amqp_urls(value)
    assert [urlsplit(url)[:3] for url in parsed.urls] == [urlsplit(url)[:3] for url in urls]
    assert [unquote(urlsplit(url).password or "") for url in parsed.urls] == [
        password for _, _, password in nodes
    ]
    assert masked_url(value) == ",".join(
        f"amqp://app:***@{host}:{port}/jobs" for host, port, _ in nodes
    )


secrets = st.text(st.sampled_from("XYZ019,;:!$&'()*+=-._~/?#@% \t"), min_size=1, max_size=8).map(
    lambda text: f"Secret{text}"
)
separators = st.sampled_from([",", ", ", "\n", "\t", " ", ",\n", "\r\n", ""])


@given(st.lists(st.tuples(hosts, secrets, separators), min_size=1, max_size=4))
def test_no_password_shows_whatever_the_separators(nodes: list[tuple[str, str, str]]) -> None:
    """Passwords written as they are (unencoded), URLs separated by commas,
    spaces, newlines or nothing: the setting parses or is refused, and
    neither its error nor the broker's repr shows a password."""
    value = "".join(f"amqp://app:{secret}@{host}/{sep}" for host, secret, sep in nodes)
    try:
        shown = repr(RabbitMQBroker(value))
    except ConfigurationError as refused:
        shown = str(refused)
    for _, secret, _ in nodes:
        assert secret not in shown
        assert quote(secret, safe="") not in shown


class _Connection:
    """A connection that works until :meth:`drop` (the server's node gone);
    or, ``hung``, whose node answers nothing once connected (stopped, or
    cut off): opening a channel and closing wait for ever; or, ``broken``,
    whose first channel fails (the node going down while it is set up)."""

    def __init__(self, url: str, *, hung: bool = False, broken: bool = False) -> None:
        self.url = url
        self.hung = hung
        self.broken = broken
        self.close_callbacks: set[Any] = set()
        self.is_closed = False
        self.close_calls = 0
        self.connected = asyncio.Event()
        self.connected.set()

    async def channel(self, *, publisher_confirms: bool) -> object:
        if self.hung:
            await asyncio.Event().wait()
        if self.broken:
            raise ConnectionResetError("node going down")
        return object()

    def drop(self) -> None:
        self.is_closed = True
        self.connected.clear()
        for callback in list(self.close_callbacks):
            callback(self, ConnectionResetError("node gone"))

    async def close(self) -> None:
        self.close_calls += 1
        if self.hung:
            await asyncio.Event().wait()
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
        # The connection lost was closed (with a time limit), the new one not.
        assert [connection.close_calls for connection in made] == [1, 0]
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


def test_open_broker_takes_a_list_and_masks_what_it_refuses() -> None:
    opened = open_broker(" AMQP://app:s3cret@mq1/,amqps://app:s3cret@mq2/")
    assert isinstance(opened, RabbitMQBroker)
    assert repr(opened) == "RabbitMQBroker('amqp://app:***@mq1/,amqps://app:***@mq2/')"
    with pytest.raises(InvalidRequest, match="unsupported broker URL") as refused:
        open_broker("redis://app:s3cret@mq1/,amqp://app:s3cret@mq2/")
    assert "s3cret" not in str(refused.value)


class _Nodes:
    """``aio_pika.connect`` for nodes named by host: each ``up`` (a
    connection), ``hung`` (connected, then answering nothing), ``broken``
    (its first channel fails), ``silent`` (dropping packets: the connect
    never ends) or refusing (``refuse`` maps a host to what it raises)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.up: set[str] = set()
        self.hung: set[str] = set()
        self.broken: set[str] = set()
        self.silent: set[str] = set()
        self.refuse: dict[str, BaseException] = {}
        self.attempts: list[str] = []
        self.timeouts: list[float] = []
        self.made: list[_Connection] = []
        monkeypatch.setattr(aio_pika, "connect", self.connect)

    async def connect(self, url: str, **options: float) -> _Connection:
        host = urlsplit(url).hostname or ""
        self.attempts.append(host)
        self.timeouts.append(options["timeout"])
        if host in self.silent:
            await asyncio.Event().wait()
        if host in self.refuse:
            raise self.refuse[host]
        if host not in self.up | self.hung | self.broken:
            raise ConnectionRefusedError(f"{host} is down")
        self.made.append(_Connection(url, hung=host in self.hung, broken=host in self.broken))
        return self.made[-1]


def _no_wait() -> Backoff:
    async def sleep(delay: float) -> None:
        await asyncio.sleep(0.01)

    return Backoff(initial=0.1, maximum=1.0, random=lambda: 0.5, sleep=sleep)


async def test_a_node_that_hangs_while_set_up_is_given_up_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """mq1 accepts the connection, then answers nothing: setting it up and
    closing it are cut short, and the next node is tried."""
    monkeypatch.setattr(rabbitmq, "_ATTACH_TIMEOUT", 0.3)
    monkeypatch.setattr(rabbitmq, "_CLOSE_TIMEOUT", 0.2)
    nodes = _Nodes(monkeypatch)
    nodes.hung, nodes.up = {"mq1"}, {"mq2"}
    broker = RabbitMQBroker("amqp://g:g@mq1/,amqp://g:g@mq2/", backoff=_no_wait)
    try:
        started = asyncio.get_running_loop().time()
        await broker.connect(within=3)
        took = asyncio.get_running_loop().time() - started
        assert (nodes.attempts, broker.node, broker.connections) == (
            ["mq1", "mq2"],
            "amqp://g:***@mq2/",
            1,
        )
        assert [connection.close_calls for connection in nodes.made] == [1, 0]
        assert 0.5 <= took < 1.5, took
    finally:
        await broker.aclose()


async def test_nodes_that_drop_packets_share_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two of three nodes never answer a connect: in the first round each
    attempt gets a third of the connect timeout, so the node that answers
    is reached within a caller's wait shorter than two full timeouts."""
    monkeypatch.setattr(rabbitmq, "_CONNECT_TIMEOUT", 0.9)
    nodes = _Nodes(monkeypatch)
    nodes.silent, nodes.up = {"mq1", "mq2"}, {"mq3"}
    broker = RabbitMQBroker("amqp://g:g@mq1/,amqp://g:g@mq2/,amqp://g:g@mq3/", backoff=_no_wait)
    try:
        await broker.connect(within=1.2)
        assert (nodes.attempts, broker.node) == (["mq1", "mq2", "mq3"], "amqp://g:***@mq3/")
        assert nodes.timeouts == [pytest.approx(0.3)] * 3
    finally:
        await broker.aclose()
    # After a whole round failed, and for a single node, the whole timeout.
    nodes = _Nodes(monkeypatch)
    nodes.silent = {"mq1", "mq2"}
    broker = RabbitMQBroker("amqp://g:g@mq1/,amqp://g:g@mq2/", backoff=_no_wait)
    try:
        with pytest.raises(BrokerUnavailable):
            await broker.connect(within=1.3)
        assert nodes.timeouts[:3] == [pytest.approx(0.45), pytest.approx(0.45), 0.9]
    finally:
        await broker.aclose()
    nodes = _Nodes(monkeypatch)
    nodes.up = {"mq1"}
    single = RabbitMQBroker("amqp://g:g@mq1/", backoff=_no_wait)
    try:
        await single.connect(within=1)
        assert nodes.timeouts == [0.9]
    finally:
        await single.aclose()


async def test_a_connection_given_up_cannot_drop_the_next_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """mq1's connection fails while set up and reports its close only once
    mq2's connection is in use: that late report is ignored."""
    nodes = _Nodes(monkeypatch)
    nodes.broken, nodes.up = {"mq1"}, {"mq2"}
    broker = RabbitMQBroker("amqp://g:g@mq1/,amqp://g:g@mq2/", backoff=_no_wait)
    try:
        await broker.connect(within=3)
        assert (nodes.attempts, broker.node) == (["mq1", "mq2"], "amqp://g:***@mq2/")
        given_up, in_use = nodes.made
        given_up.drop()  # its close callback, late
        await asyncio.sleep(0.2)
        assert (nodes.attempts, broker.connections, in_use.close_calls) == (["mq1", "mq2"], 1, 0)
        await broker.connect(within=0.1)  # still connected
    finally:
        await broker.aclose()


@pytest.mark.parametrize(
    ("refusal", "attempts"),
    [
        # A node may refuse the virtual host alone (it is down there): the
        # next node is tried; a process stops only once every node refused.
        (aiormq.exceptions.ConnectionNotAllowed(530, "NOT_ALLOWED - vhost / is down"), 2),
        # A login refused is refused by every node: the process stops at once.
        (aiormq.exceptions.ProbableAuthenticationError("ACCESS_REFUSED"), 1),
    ],
)
async def test_a_refusal_by_one_node_stops_the_process_only_when_every_node_would(
    monkeypatch: pytest.MonkeyPatch, refusal: BaseException, attempts: int
) -> None:
    nodes = _Nodes(monkeypatch)
    nodes.refuse, nodes.up = {"mq1": refusal}, {"mq2"}
    broker = RabbitMQBroker("amqp://g:g@mq1/,amqp://g:g@mq2/", backoff=_no_wait)
    try:
        if attempts == 2:
            await broker.connect(within=3)
            assert (nodes.attempts, broker.node) == (["mq1", "mq2"], "amqp://g:***@mq2/")
        else:
            with pytest.raises(ConfigurationError, match="refused the login"):
                await broker.connect(within=3)
            assert nodes.attempts == ["mq1"]
    finally:
        await broker.aclose()
    nodes = _Nodes(monkeypatch)
    nodes.refuse = {"mq1": refusal, "mq2": refusal}
    broker = RabbitMQBroker("amqp://g:g@mq1/,amqp://g:g@mq2/", backoff=_no_wait)
    try:
        with pytest.raises(ConfigurationError, match="refused"):
            await broker.connect(within=3)
        assert nodes.attempts == ["mq1", "mq2"][:attempts]
    finally:
        await broker.aclose()
