"""The RabbitMQ backend (``amqp://``), on aio-pika.

What it guarantees, and how:

- **Nothing is lost once ``publish`` returns**: queues are durable (quorum
  queues where the server has them), messages persistent, and the channel
  runs publisher confirms, so a publish returns only once the broker holds
  the message. A message not confirmed (the connection lost) or nacked (a
  quorum queue without a leader for a moment after its node was lost, or
  full with ``reject-publish``) is sent again until ``publish_timeout``,
  then :class:`~jobtrack.errors.BrokerUnavailable`; one the server returns
  (no such queue) is a :class:`~jobtrack.errors.BrokerError` at once.
- **Acks are manual**, and sent by the handler when it chooses (the
  consumers ack only once the item's progress is durable). A message whose
  consumer goes away unacked is delivered again.
- **Dead letters keep their reason**: a message nacked without requeue is
  republished (confirmed) to ``<queue>.dead`` with the reason in its
  ``x-jobtrack-reason`` header (and, from a quorum queue, its delivery count
  in ``x-jobtrack-delivery-count``: a classic queue does not count
  deliveries, so its dead letters have no count), then acked. A quorum
  queue also has a delivery limit: past it, the server itself dead-letters
  the message to the same queue (a consumer that crashes on it every time
  cannot loop forever).
- **Reconnection resumes consuming.** aio-pika's ``connect_robust`` has had
  reconnects that come back with no consumers or that ack on a dead channel
  (mosquito/aio-pika issues #231, #334, #626), so this module supervises a
  plain connection itself: when it closes, it connects again with backoff,
  declares what it had declared and starts every subscription on a new
  channel. A delivery remembers the channel it came on; settling it after
  that channel is gone does nothing (the server has already put the message
  back), and never settles a different message on the new channel. The
  waits between attempts double up to a ceiling, with jitter
  (:class:`~jobtrack.broker.backoff.Backoff`). A subscription whose queue
  the server refuses (it exists with other settings, or the user may not
  use it) is reported once and dropped, never retried at each reconnection.
- **Configuration errors are not outages.** A login the server refuses, a
  virtual host that does not exist or is closed to the user, and a URL that
  does not parse raise :class:`~jobtrack.errors.ConfigurationError` at once
  (before the first connection succeeds), naming the setting; only errors
  of the connection itself (a socket, a closed connection or channel, a
  timeout) count as the broker being away. Any other error, a
  ``RuntimeError`` of a bug included, is raised to the caller.

- **A cluster's nodes, one after another.** The setting may name several
  nodes, their URLs separated by commas
  (``amqp://u:p@mq1:5672/,amqp://u:p@mq2:5672/``; a comma starts a new URL
  only where ``amqp://`` or ``amqps://`` follows it, so a comma in a
  password stays in its URL). The supervisor connects to the first node
  that answers; when the connection is lost it tries the next node (round
  robin), declares again and consumes there, and publishes go there. A
  failed attempt moves on to the next node at once; once every node has
  failed in a row, the backoff waits before the next round. Spaces and
  newlines never separate URLs: a URL holding one is refused (urlsplit
  would drop them, reading two URLs as one).

- **Time limits on every step**, so that a node that answers nothing
  (stopped, or cut off by the network) cannot hold the supervisor: an
  attempt to connect (10 s; in a first round over several nodes, each
  node's share of it, at least 2 s), setting the connection up (10 s) and
  closing one (5 s). A connection in use is watched by the AMQP heartbeat
  (``heartbeat=…``; aio-pika's default is 60 s).

- **A refusal stops a process only when it cannot work anywhere**: before
  the first connection, a refused login raises at once, and a refused
  virtual host only once every node refused it (one node may refuse it
  alone, while the virtual host is down there).

URL options (removed before the URL reaches aio-pika, which takes the
others, such as ``heartbeat``): ``queue_type`` (``quorum``, the default, or
``classic``) and ``delivery_limit`` (quorum queues; default 20). The URLs
of a list must agree on both.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
import pamqp.exceptions
import yarl
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from jobtrack.broker.backoff import Backoff
from jobtrack.broker.base import (
    MAX_HELD_DEAD,
    DeadMessage,
    Handler,
    QueueStats,
    clip,
    dead_letter_queue,
    dead_message_id,
    is_dead_letter_queue,
)
from jobtrack.broker.settle import SettleOnce, log_dead_letter, run_handler
from jobtrack.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    NotFound,
    PartlySettled,
    QueueRefused,
    TooManyDeadLetters,
    masked_url,
)

__all__ = [
    "BROKER_SETTING",
    "BrokerNodes",
    "RabbitMQBroker",
    "parse_amqp_url",
    "parse_amqp_urls",
    "split_broker_urls",
]

logger = logging.getLogger(__name__)

REASON_HEADER = "x-jobtrack-reason"
SOURCE_HEADER = "x-jobtrack-queue"
COUNT_HEADER = "x-jobtrack-delivery-count"
DIED_HEADER = "x-jobtrack-died-at"
# On a dead letter sent back to its queue: the dead-letter queue it came from
# (its message id is the dead letter's).
REQUEUED_HEADER = "x-jobtrack-requeued-from"
# Seconds a listing waits for another process's listing of the same
# dead-letter queue to give it back, and for all of it to be delivered; and
# how long a send-back looks again for an id not found.
_HELD_PATIENCE = 2.0
# Seconds without a delivery after which a listing stops waiting for more.
_HELD_IDLE = 0.5
# Headers the server changes while a message waits (a quorum queue counts
# each return): left out of a dead letter's derived id.
_VOLATILE_HEADERS = frozenset({"x-delivery-count"})
BROKER_SETTING = "JOBTRACK_BROKER_URL / --broker"
_QUEUE_TYPES = ("quorum", "classic")
# Errors that mean "the connection or channel is gone", not "this call is
# wrong". Not RuntimeError: a bug raises those too (aiormq's "closed" ones
# are ChannelInvalidStateError, and connection.channel's is translated in
# _open_channel).
_GONE: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPConnectionError,
    aio_pika.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
)
_GONE_OR_SLOW: tuple[type[BaseException], ...] = (*_GONE, TimeoutError)
# What stops a send-back of dead letters part way: a publish not confirmed,
# or the channel holding them gone.
_LOST_SETTLING: tuple[type[BaseException], ...] = (BrokerError, *_GONE_OR_SLOW)
# What a failed connection attempt raises when the server is away (or refused).
_CONNECT_FAILED: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    pamqp.exceptions.PAMQPException,
    OSError,
    TimeoutError,
)
# Seconds a connection attempt may take (TCP, TLS and the AMQP handshake);
# see RabbitMQBroker._attempt_timeout for its share with several nodes.
_CONNECT_TIMEOUT = 10.0
# Seconds setting a new connection up (its channels, declarations and
# consumers) may take, and closing one.
_ATTACH_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 5.0
# The server refused to let us consume a queue: retrying cannot help.
_REFUSED: tuple[type[BaseException], ...] = (
    QueueRefused,
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ChannelNotFoundEntity,
    aiormq.exceptions.ChannelPreconditionFailed,
)

# Any whitespace or control character: none belongs in a URL, and urlsplit
# silently drops tabs and newlines.
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\s]")


def _several_urls(url: str) -> str | None:
    """Why ``url`` reads as several URLs run together, or None. A comma
    elsewhere (in a password, a virtual host, an option) is the URL's."""
    if _UNSAFE.search(url):
        # urlsplit drops tabs and newlines: two URLs on two lines would read
        # as one, the second in the first's virtual host.
        return (
            "a space or control character in the URL (several URLs are separated by"
            " commas, each starting amqp:// or amqps://; a space in a password is written %20)"
        )
    if "://" in url.partition("://")[2]:
        return (
            "another URL inside this one (several URLs are separated by commas,"
            " each starting amqp:// or amqps://)"
        )
    if url.endswith(","):
        return (
            "a comma at the end (an empty URL in a list; a virtual host ending"
            " in a comma is written %2C)"
        )
    return None


def parse_amqp_url(url: str) -> tuple[str, str, int]:
    """Split jobtrack's options off an ``amqp://`` URL:
    (the URL for aio-pika, the queue type, the delivery limit).

    :raises ConfigurationError: (an :class:`~jobtrack.errors.InvalidRequest`)
        for a URL that is not AMQP, has a bad port or a bad option, holds a
        space or control character, a comma in its host, another URL
        (``://``) in its path or query, or ends with a comma.
    """

    def refuse(why: str) -> ConfigurationError:
        return ConfigurationError(
            f"bad broker URL {masked_url(url)}: {why}", setting=BROKER_SETTING
        )

    several = _several_urls(url)
    if several is not None:
        raise refuse(several)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [IPv6 address, say
        raise refuse(str(exc)) from None
    if parts.scheme not in ("amqp", "amqps"):
        raise refuse("not an AMQP URL (amqp://user:password@host:port/vhost)")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of 0-65535; its text may be a password's
        raise refuse(
            "bad port (not a whole number from 1 to 65535;"
            " a / ? # or @ in a password is written %2F %3F %23 %40)"
        ) from None
    if port == 0 or not parts.hostname:
        raise refuse("no host" if not parts.hostname else "port 0")
    if "," in parts.netloc.rpartition("@")[2]:
        raise refuse(
            "a comma in the host (several URLs are separated by commas,"
            " each starting amqp:// or amqps://)"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {key: value for key, value in query if key in ("queue_type", "delivery_limit")}
    rest = [(key, value) for key, value in query if key not in options]
    queue_type = options.get("queue_type", "quorum")
    if queue_type not in _QUEUE_TYPES:
        raise refuse(f"queue_type must be quorum or classic, not {queue_type!r}")
    raw_limit = options.get("delivery_limit", "20")
    try:
        delivery_limit = int(raw_limit)
    except ValueError:
        raise refuse(f"delivery_limit must be a whole number, not {raw_limit!r}") from None
    if delivery_limit < 1:
        raise refuse(f"delivery_limit must be at least 1, not {delivery_limit}")
    bare = urlunsplit(parts._replace(query=urlencode(rest)))
    try:
        yarl.URL(bare)  # as aio-pika will read it
    except ValueError as exc:  # a host name IDNA cannot encode, say
        raise refuse(str(exc)) from None
    return bare, queue_type, delivery_limit


# A comma followed by a new AMQP URL (spaces around it allowed).
_URL_SEPARATOR = re.compile(r"\s*,\s*(?=amqps?://)", re.IGNORECASE)


def split_broker_urls(value: str) -> list[str]:
    """The URLs of a broker setting: one URL, or several separated by commas.

    A comma separates two URLs only where ``amqp://`` or ``amqps://``
    follows it (spaces around it are dropped), so a comma inside one URL,
    in its password or virtual host say, stays where it is. Spaces and
    newlines never separate URLs: :func:`parse_amqp_urls` refuses them.
    Nothing is checked here.
    """
    return _URL_SEPARATOR.split(value.strip())


class BrokerNodes(NamedTuple):
    """A broker setting, parsed: the nodes' URLs for aio-pika (jobtrack's
    options removed) and the options they agree on."""

    urls: tuple[str, ...]
    queue_type: str
    delivery_limit: int


def parse_amqp_urls(value: str) -> BrokerNodes:
    """Parse a broker setting of one or several ``amqp://`` URLs
    (:func:`split_broker_urls`), each as :func:`parse_amqp_url` does.

    :raises ConfigurationError: a URL is empty or does not parse, holds a
        space or control character (URLs on several lines, say: they are
        separated by commas only), a comma in its host or another URL in its
        path or query (a separator missing its ``amqp://``, say), ends with a
        comma, or the URLs disagree on
        ``queue_type`` or ``delivery_limit`` (the error names the option).
    """
    parsed = [parse_amqp_url(url) for url in split_broker_urls(value)]
    for option, index in (("queue_type", 1), ("delivery_limit", 2)):
        values = {str(one[index]) for one in parsed}
        if len(values) > 1:
            raise ConfigurationError(
                f"the broker URLs {masked_url(value)} disagree on {option}"
                f" ({', '.join(sorted(values))}): every node of a list takes the same"
                " queue_type and delivery_limit",
                setting=BROKER_SETTING,
            )
    return BrokerNodes(tuple(one[0] for one in parsed), parsed[0][1], parsed[0][2])


def _login_refused(exc: BaseException, url: str) -> ConfigurationError | None:
    """The configuration error a failed connection attempt means, if any:
    the login refused (403 ACCESS_REFUSED), or the virtual host missing or
    closed to the user (530 NOT_ALLOWED)."""
    parts = urlsplit(url)
    user = unquote(parts.username or "guest")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    where = masked_url(url)
    errors = aiormq.exceptions
    if isinstance(exc, errors.ProbableAuthenticationError | errors.AuthenticationError):
        return ConfigurationError(
            f"RabbitMQ refused the login of user {user!r} at {where}: wrong user or password"
            f" ({_first_arg(exc)})",
            setting=BROKER_SETTING,
        )
    code = exc.args[0] if type(exc) is errors.ConnectionClosed and exc.args else None
    # aiormq 7 raises a refusal of Connection.Open (the virtual host) as an
    # InvalidFrameError that names the Connection.Close frame it got instead.
    refused_open = isinstance(exc, errors.InvalidFrameError) and "Connection.OpenOk" in str(exc)
    if isinstance(exc, errors.ConnectionNotAllowed) or code in (403, 530) or refused_open:
        return ConfigurationError(
            f"RabbitMQ refused virtual host {vhost!r} to user {user!r} at {where}:"
            " it does not exist, or the user has no permission on it",
            setting=BROKER_SETTING,
        )
    return None


def _is_login_refusal(exc: BaseException) -> bool:
    """Whether a failed connection attempt is the server refusing the user
    or password (the same on every node of a cluster), rather than the
    virtual host (which a node may refuse alone, while it is down there)."""
    errors = aiormq.exceptions
    return isinstance(exc, errors.ProbableAuthenticationError | errors.AuthenticationError)


def _first_arg(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else repr(exc)


async def _open_channel(
    connection: AbstractConnection, *, publisher_confirms: bool
) -> AbstractChannel:
    """A new channel; a connection that closed meanwhile is a ConnectionError
    (aiormq says so with a bare RuntimeError, which a bug raises too)."""
    try:
        return await connection.channel(publisher_confirms=publisher_confirms)
    except RuntimeError as exc:
        if _gone(connection):
            raise ConnectionError(f"the connection closed: {exc}") from exc
        raise


def _gone(connection: AbstractConnection) -> bool:
    """Whether ``connection`` is closed, by us or by the server: aio-pika's
    ``is_closed`` turns true only when we close it, while a close from the
    server clears its ``connected`` event, and the AMQP connection beneath
    can close before either is told."""
    if connection.is_closed or not connection.connected.is_set():
        return True
    transport = connection.transport
    return transport is None or bool(transport.connection.is_closed)


class _Acks:
    """The acks of one channel, merged where the protocol allows.

    RabbitMQ numbers a channel's deliveries 1, 2, 3... and an ack with
    ``multiple=True`` settles every delivery up to its tag. So acks are sent
    at the end of the event loop's turn: the run of settled tags from the
    lowest not yet passed goes as one ``basic.ack(multiple=True)``; an ack
    behind a tag not settled goes alone, at once, so no ack ever waits for
    another message. A tag passes only once it was settled here: a delivery
    whose handler has not started yet, or one this process never saw, is
    never covered by another's ack.
    """

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self._next = 1  # the lowest delivery tag not yet passed
        self._settled: set[int] = set()  # tags settled (acked or not), not yet passed
        self._waiting: dict[int, AbstractIncomingMessage] = {}  # acked, not yet sent
        self._scheduled = False
        self._sending: set[asyncio.Future[None]] = set()

    def settled(self, message: AbstractIncomingMessage) -> None:
        """A reject was sent (written, not just queued) for ``message`` on its own."""
        if message.delivery_tag is not None:
            self._settled.add(message.delivery_tag)

    def ack(self, message: AbstractIncomingMessage) -> None:
        """Ack ``message`` at the end of the loop's turn, merged if it can be."""
        tag = message.delivery_tag
        if tag is None:
            return
        self._settled.add(tag)
        self._waiting[tag] = message
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    async def flush(self) -> None:
        """Send what is waiting now, and wait for the sends to be written."""
        self._send()
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=5.0)

    def _send(self) -> None:
        self._scheduled = False
        if self.channel.is_closed:
            self._waiting.clear()  # the server takes them back; nothing to send
            return
        last: AbstractIncomingMessage | None = None
        while self._next in self._settled:
            self._settled.discard(self._next)
            last = self._waiting.pop(self._next, last)
            self._next += 1
        sends = [] if last is None else [last.ack(multiple=True)]
        sends += [message.ack() for message in self._waiting.values()]
        self._waiting.clear()
        for send in sends:
            task = asyncio.ensure_future(_quietly(send))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)


async def _quietly(settle: Awaitable[Any], what: str = "ack", queue: str = "") -> None:
    """Send a settle; if its channel is gone, the server has the message back."""
    try:
        await settle
    except _GONE as exc:
        logger.info(
            "%s of a message from %s lost with its channel (%s); the broker delivers it again",
            what,
            queue or "a queue",
            exc,
            extra={"action": "settle_lost", "queue": queue},
        )


class _RabbitDelivery(SettleOnce[AbstractIncomingMessage]):
    """One delivery; settled on the channel it came on, or not at all."""

    __slots__ = ("_acks", "_broker")

    def __init__(
        self,
        broker: RabbitMQBroker,
        queue: str,
        message: AbstractIncomingMessage,
        acks: _Acks,
    ):
        super().__init__(queue, message)
        self._broker = broker
        self._acks = acks

    @property
    def delivery_count(self) -> int:
        # Quorum queues count returns in x-delivery-count (absent on the
        # first delivery); classic queues only say "redelivered", so there
        # every redelivery is 2.
        count = (self._message.headers or {}).get("x-delivery-count")
        if isinstance(count, int) and count >= 0:
            return count + 1
        return 2 if self._message.redelivered else 1

    async def ack(self) -> None:
        self._settle()
        self._acks.ack(self._message)

    async def nack(self, *, requeue: bool, reason: str = "") -> None:
        self._settle()
        if requeue:
            # basic.reject: every server counts it as a delivery (RabbitMQ 4.3
            # stopped counting requeues by basic.nack), so limits still trip.
            await self._reject(requeue=True)
            return
        try:
            await self._broker.dead_letter(
                self._queue, self._message, reason, delivery_count=self.delivery_count
            )
        except BrokerError as exc:
            # Without our copy, the queue's own dead-letter exchange takes it.
            logger.warning("dead-letter publish failed (%s); rejecting instead", exc)
            await self._reject(requeue=False)
            return
        self._acks.ack(self._message)

    async def retry(self, body: bytes) -> None:
        self._settle()
        try:
            await self._broker.publish(self._queue, body)
        except BrokerError as exc:
            logger.warning("retry publish failed (%s); requeueing instead", exc)
            await self._reject(requeue=True)
            return
        self._acks.ack(self._message)

    async def _reject(self, *, requeue: bool) -> None:
        what = "requeue" if requeue else "reject"
        await _quietly(self._message.reject(requeue=requeue), what, self._queue)
        self._acks.settled(self._message)  # only now may a merged ack pass it


class _RabbitSubscription:
    """A consumer of one queue that survives reconnections."""

    def __init__(self, broker: RabbitMQBroker, queue: str, handler: Handler, prefetch: int):
        self._broker = broker
        self.queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self._channel: AbstractChannel | None = None
        self._amqp_queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._handling: dict[_RabbitDelivery, _Acks] = {}  # handlers running, by channel
        self._restart: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._acks: _Acks | None = None
        self.refused: BrokerError | None = None  # why the server refused it, once it did

    async def start(self, connection: AbstractConnection) -> None:
        """Open a channel on ``connection`` and start consuming (once)."""
        async with self._starting:
            if self.stopping or (self._channel is not None and not self._channel.is_closed):
                return
            await self._start(connection)

    async def _start(self, connection: AbstractConnection) -> None:
        channel = await _open_channel(connection, publisher_confirms=False)
        try:
            await channel.set_qos(prefetch_count=self._prefetch)
            amqp_queue = await self._broker.declare(channel, self.queue)
        except BaseException:
            with contextlib.suppress(*_GONE_OR_SLOW):
                await channel.close()
            raise
        self._channel, self._amqp_queue = channel, amqp_queue
        self._acks = _Acks(channel)
        channel.close_callbacks.add(self._on_channel_close)
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_server_cancel)
        # Each message is settled through the acks of the channel it came on,
        # never a later channel's (its tags are numbered from 1 again).
        self._tag = await amqp_queue.consume(
            functools.partial(self._on_message, self._acks), no_ack=False
        )
        logger.info(
            "consuming %s (prefetch %d)",
            self.queue,
            self._prefetch,
            extra={"action": "consume", "queue": self.queue},
        )

    def _on_server_cancel(self, frame: object) -> None:
        # The server cancelled our consumer (its queue was deleted, say): the
        # channel stays open but delivers nothing more. Start over.
        channel = self._channel
        if self.stopping or channel is None:
            return
        logger.warning(
            "the server cancelled the consumer of %s; consuming again",
            self.queue,
            extra={"action": "consumer_restart", "queue": self.queue},
        )
        self._channel = self._amqp_queue = self._tag = None
        self._restart = asyncio.create_task(self._broker.restart(self, close=channel))

    def _on_channel_close(self, channel: object, exc: BaseException | None = None) -> None:
        # A channel can close alone (the server cancelled the consumer, or
        # refused a command); the connection's loss is the supervisor's.
        if self.stopping or channel is not self._channel:
            return
        self._channel = self._amqp_queue = self._tag = None
        logger.warning(
            "channel consuming %s closed (%s); consuming again",
            self.queue,
            exc,
            extra={"action": "consumer_restart", "queue": self.queue},
        )
        self._restart = asyncio.create_task(self._broker.restart(self))

    async def _on_message(self, acks: _Acks, message: AbstractIncomingMessage) -> None:
        # aiormq runs this in a task it cancels when the channel closes; the
        # handler runs in a task of ours, so that a reconnection never
        # interrupts work half done.
        if self.stopping or acks.channel.is_closed:
            return  # left unacked: the server delivers it again once the channel closes
        task = asyncio.create_task(self._handle(message, acks), name=f"handle:{self.queue}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage, acks: _Acks) -> None:
        delivery = _RabbitDelivery(self._broker, self.queue, message, acks)
        self._handling[delivery] = acks
        try:
            await run_handler(self._handler, delivery, self.queue)
        finally:
            del self._handling[delivery]

    @property
    def unsettled(self) -> int:
        """Deliveries whose handler runs, on a channel still open: a closed
        channel's messages are back in the queue (counted there, and
        delivered again), whatever its handlers go on doing."""
        return sum(not acks.channel.is_closed for acks in self._handling.values())

    async def cancel(self, *, grace: float = 0.0) -> None:
        """Stop taking messages; give handlers in flight ``grace`` seconds to
        finish, then stop them (their messages go back to the queue)."""
        async with self._starting:  # not while a start is half done
            self.stopping = True
        self._broker.forget(self)
        if self._restart is not None:
            self._restart.cancel()
        if self._amqp_queue is not None and self._tag is not None:
            with contextlib.suppress(*_GONE_OR_SLOW):
                await asyncio.wait_for(self._amqp_queue.cancel(self._tag), 5.0)
        if self._tasks and grace > 0:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in set(self._tasks):
            task.cancel()
        if self._tasks:  # their hand-backs; bounded, in case the connection is gone
            await asyncio.wait(set(self._tasks), timeout=10.0)
        if self._acks is not None:
            await self._acks.flush()  # before the close, or the server requeues them
        await self.detach()

    async def detach(self) -> None:
        """Close this subscription's channel (the server requeues what is unacked)."""
        channel, self._channel, self._amqp_queue, self._tag = self._channel, None, None, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*_GONE_OR_SLOW):
                await asyncio.wait_for(channel.close(), 5.0)


class RabbitMQBroker:
    """A :class:`~jobtrack.broker.base.Broker` on RabbitMQ.

    :param url: ``amqp://user:password@host:port/vhost`` with aio-pika's
        options (``heartbeat=…``) and ours (``queue_type``, ``delivery_limit``);
        or the URLs of several nodes of a cluster, separated by commas
        (:func:`split_broker_urls`), tried in turn.
    :param publish_timeout: seconds a publish may wait for the broker (through
        reconnections) before :class:`~jobtrack.errors.BrokerUnavailable`.
    :param confirm_window: publishes of :meth:`publish_many` awaiting their
        confirm at once, over all its calls in flight.
    :param max_reconnect_delay: the ceiling of the reconnection backoff.
    :param backoff: makes the backoff of each run of attempts (tests inject
        one with their own random and sleep).
    :param management_url: RabbitMQ's management API
        (``http://user:password@host:15672``), asked for a queue's numbers,
        the messages held unacked among them; None: AMQP alone.
    :raises ConfigurationError: for a URL that does not parse, or URLs that
        disagree on ``queue_type`` or ``delivery_limit``, or a management
        URL that is not ``http://`` or ``https://`` with a host.
    """

    def __init__(
        self,
        url: str,
        *,
        publish_timeout: float = 60.0,
        confirm_window: int = 100,
        max_reconnect_delay: float = 5.0,
        backoff: Callable[[], Backoff] | None = None,
        management_url: str | None = None,
    ) -> None:
        self._urls, self.queue_type, self.delivery_limit = parse_amqp_urls(url)
        self._management = None if management_url is None else _Management(management_url)
        self._node = 0  # the index in _urls of the node connected, or to try next
        self._publish_timeout = publish_timeout
        self._window = asyncio.Semaphore(confirm_window)
        self._backoff = backoff or (lambda: Backoff(initial=0.1, maximum=max_reconnect_delay))
        self._connection: AbstractConnection | None = None
        # The connection being set up or in use: the only one whose close counts.
        self._current: AbstractConnection | None = None
        self._refusing: set[int] = set()  # nodes that refused the virtual host
        self._publisher: AbstractChannel | None = None
        self._declared: set[str] = set()
        self._subscriptions: list[_RabbitSubscription] = []
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._publisher_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        self._failure: BrokerError | None = None
        self._failed = asyncio.Event()
        self.connections = 0  # how many times a connection was made (1 + reconnections)

    def __repr__(self) -> str:
        return f"RabbitMQBroker({self._where()!r})"

    @property
    def _url(self) -> str:
        """The URL of the node connected, or to be tried next."""
        return self._urls[self._node]

    @property
    def node(self) -> str:
        """The URL (password masked) of the node connected, or to be tried next."""
        return masked_url(self._url)

    def _where(self) -> str:
        return ",".join(masked_url(url) for url in self._urls)

    def _next_node(self) -> None:
        self._node = (self._node + 1) % len(self._urls)

    async def connect(self, *, within: float = 30.0) -> None:
        """Connect now (the first publish or consume does it otherwise).

        :raises ConfigurationError: the server refused the login or the
            virtual host (at once, not after ``within``).
        :raises BrokerUnavailable: no connection within ``within`` seconds.
        """
        await self._connected(within)

    async def _connected(self, within: float) -> AbstractConnection:
        if self._closed:
            raise BrokerError("the broker is closed")
        supervisor = self._supervisor
        if supervisor is None:
            supervisor = self._supervisor = asyncio.create_task(
                self._supervise(), name="amqp-supervisor"
            )
            supervisor.add_done_callback(self._on_supervisor_done)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        # Until ready (again: a connection can drop before this task runs),
        # the supervisor ends, or the time is up.
        while not self._ready.is_set() and not supervisor.done() and loop.time() < deadline:
            ready = asyncio.ensure_future(self._ready.wait())
            try:
                await asyncio.wait(
                    {ready, supervisor},
                    timeout=deadline - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                ready.cancel()
        if supervisor.done():  # it ends on a configuration error or a bug, never on an outage
            if supervisor.cancelled() or supervisor.exception() is None:
                raise BrokerError("the broker is closed")
            raise supervisor.exception()  # type: ignore[misc]
        if not self._ready.is_set():
            raise BrokerUnavailable(f"cannot reach RabbitMQ at {self._where()} within {within:g} s")
        assert self._connection is not None
        return self._connection

    async def failed(self) -> BrokerError:
        """Wait until the connection's supervisor stopped for good (a
        configuration error, or a bug) or the server refused a queue this
        broker consumes, and return why. Outages never end it."""
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    def _fail(self, failure: BrokerError) -> None:
        if self._failure is None:
            self._failure = failure
            self._failed.set()

    def _on_supervisor_done(self, supervisor: asyncio.Task[None]) -> None:
        if supervisor.cancelled() or supervisor.exception() is None:
            return
        exc = supervisor.exception()
        self._fail(
            exc
            if isinstance(exc, BrokerError)
            else BrokerError(f"the RabbitMQ connection stopped on an error: {exc!r}")
        )
        if not isinstance(exc, ConfigurationError):  # that one goes to every caller as it is
            logger.error(
                "the RabbitMQ connection's supervisor stopped on an error",
                exc_info=exc,
                extra={"action": "broker_failed"},
            )

    async def _supervise(self) -> None:
        """Keep a connection open, to one node after another, and every
        subscription consuming on it.

        Ends (raising) on a configuration error before the first connection,
        and on any error that is not the connection's (a bug)."""
        backoff = self._backoff()
        failed = 0  # attempts failed in a row, over the nodes
        while not self._closed:
            connection = await self._connect(backoff, failed)
            if connection is None:
                failed += 1
                continue
            failed = 0
            up_since = asyncio.get_running_loop().time()
            self._ready.set()
            await self._lost.wait()
            self._ready.clear()
            await self._drop(connection)
            self._next_node()  # the node lost is likely gone: the next one first
            # A connection that held a while is followed by an attempt at once;
            # one that keeps dropping soon after it is made, by the backoff.
            if asyncio.get_running_loop().time() - up_since >= backoff.maximum:
                backoff.reset()
            elif not self._closed:
                await backoff.wait()

    async def _connect(self, backoff: Backoff, failed: int) -> AbstractConnection | None:
        """One attempt at the current node: the connection, set up; or None
        after moving on to the next node (waiting the backoff's next delay
        once each node has failed in turn).

        :raises ConfigurationError: before the first connection, the login
            refused, or the virtual host refused by every node.
        """
        url = self._url
        timeout = self._attempt_timeout(failed)
        try:
            # aio-pika's timeout does not bound every step of a handshake.
            connection = await asyncio.wait_for(aio_pika.connect(url, timeout=timeout), timeout)
        except _CONNECT_FAILED as exc:
            refused = _login_refused(exc, url)
            if refused is not None and self.connections == 0:
                self._refusing.add(self._node)
                if _is_login_refusal(exc) or len(self._refusing) == len(self._urls):
                    raise refused from exc
            await self._after_failure(
                backoff,
                failed,
                "cannot connect to RabbitMQ at %s (%s)",
                masked_url(url),
                exc if refused is None else refused,
                level=logging.WARNING if refused is None else logging.ERROR,
            )
            return None
        self._current = connection
        self._lost.clear()
        connection.close_callbacks.add(self._on_close)
        try:
            # A node that hangs after the handshake (stopped, or cut off)
            # answers nothing: give up on it in time.
            await asyncio.wait_for(self._attach(connection), _ATTACH_TIMEOUT)
        except _GONE_OR_SLOW as exc:
            await self._drop(connection)
            await self._after_failure(
                backoff,
                failed,
                "lost the RabbitMQ connection to %s while setting up (%s)",
                masked_url(url),
                exc if str(exc) else type(exc).__name__,
            )
            return None
        except BaseException:
            await self._drop(connection)
            raise
        self.connections += 1
        if self.connections > 1:
            logger.warning(
                "reconnected to RabbitMQ at %s; consuming %d queue(s) again",
                masked_url(url),
                len(self._subscriptions),
                extra={"action": "broker_reconnected", "node": masked_url(url)},
            )
        else:
            logger.info(
                "connected to RabbitMQ at %s",
                masked_url(url),
                extra={"action": "broker_connected", "node": masked_url(url)},
            )
        return connection

    def _attempt_timeout(self, failed: int) -> float:
        """Seconds the next connection attempt may take: the whole connect
        timeout for a single node, and from the second round of failed
        attempts on; in a first round over several nodes, a share of it (at
        least a fifth), so that nodes dropping packets silently do not eat
        a caller's whole wait before a node that answers is tried."""
        nodes = len(self._urls)
        if nodes == 1 or failed >= nodes:
            return _CONNECT_TIMEOUT
        return max(_CONNECT_TIMEOUT / nodes, _CONNECT_TIMEOUT / 5)

    async def _drop(self, connection: AbstractConnection) -> None:
        """Give up ``connection`` (lost, or failed while set up): forget it
        and the channels on it, and close it, each close within a time
        limit (a hung node never answers)."""
        if self._current is connection:
            self._current = None  # its close callback is ignored from now on
        if self._connection is connection:
            self._connection = self._publisher = None
        with contextlib.suppress(*_GONE_OR_SLOW):
            await asyncio.wait_for(connection.close(), _CLOSE_TIMEOUT)
        await asyncio.gather(*(s.detach() for s in list(self._subscriptions)))

    async def _after_failure(
        self,
        backoff: Backoff,
        failed: int,
        message: str,
        *args: object,
        level: int = logging.WARNING,
    ) -> None:
        """Log a failed attempt and move on to the next node: at once while
        some node of this round is left to try, after the backoff's next
        delay once every node has failed in a row."""
        self._next_node()
        if (failed + 1) % len(self._urls):
            logger.log(
                level,
                message + "; trying %s",
                *args,
                self.node,
                extra={"action": "broker_unavailable"},
            )
            return
        delay = backoff.next_delay()
        logger.log(
            level,
            message + "; retrying in %.1f s",
            *args,
            delay,
            extra={"action": "broker_unavailable"},
        )
        await backoff.sleep(delay)

    async def _attach(self, connection: AbstractConnection) -> None:
        self._declared = set()
        publisher = await _open_channel(connection, publisher_confirms=True)
        self._connection, self._publisher = connection, publisher
        for subscription in list(self._subscriptions):
            try:
                await subscription.start(connection)
            except _REFUSED as exc:
                self._refuse(subscription, exc)

    def _refuse(self, subscription: _RabbitSubscription, exc: BaseException) -> BrokerError:
        """Report, once, that the server refused ``subscription``'s queue, and
        drop it: it is not started again, at a reconnection or otherwise."""
        self.forget(subscription)
        refused = exc if isinstance(exc, BrokerError) else QueueRefused(str(exc))
        subscription.refused = refused
        self._fail(refused)
        logger.error(
            "RabbitMQ refused consuming %s; no longer consuming it: %s",
            subscription.queue,
            refused,
            extra={"action": "consume_refused", "queue": subscription.queue},
        )
        return refused

    def _on_close(self, connection: object, exc: BaseException | None = None) -> None:
        if connection is not self._current:
            return  # one given up already (it failed while set up): not ours to report
        if not self._closed:
            logger.warning(
                "RabbitMQ connection closed: %s",
                exc,
                extra={"action": "broker_disconnected"},
            )
        self._lost.set()

    async def declare(self, channel: AbstractChannel, queue: str) -> AbstractQueue:
        """Declare ``queue`` (durable, with its dead-letter queue) on ``channel``.

        A queue that exists with other settings is a :class:`BrokerError` (and,
        as AMQP has it, the end of ``channel``)."""
        arguments: dict[str, Any] = {"x-queue-type": self.queue_type}
        try:
            if is_dead_letter_queue(queue):
                declared = await channel.declare_queue(queue, durable=True, arguments=arguments)
                self._declared.add(queue)
                return declared
            if queue not in self._declared:
                await channel.declare_queue(
                    dead_letter_queue(queue), durable=True, arguments=dict(arguments)
                )
            arguments |= {
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead_letter_queue(queue),
            }
            if self.queue_type == "quorum":
                arguments["x-delivery-limit"] = self.delivery_limit
            declared = await channel.declare_queue(queue, durable=True, arguments=arguments)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise QueueRefused(
                f"queue {queue!r} or its dead-letter queue exists with other settings than"
                f" jobtrack's ({self.queue_type}, delivery limit {self.delivery_limit}): {exc}"
            ) from exc
        self._declared.add(queue)
        self._declared.add(dead_letter_queue(queue))
        return declared

    async def _publisher_for(self, connection: AbstractConnection) -> AbstractChannel:
        """The publishing channel, opened again if an error closed it alone."""
        async with self._publisher_lock:
            publisher = self._publisher
            if publisher is None or publisher.is_closed:
                if _gone(connection) or connection is not self._connection:
                    raise ConnectionError("the connection is being replaced")
                publisher = await _open_channel(connection, publisher_confirms=True)
                self._publisher = publisher
            return publisher

    async def _reopen_publisher(self, publisher: AbstractChannel) -> None:
        """Close ``publisher``, unless already replaced, so that the next
        publish opens a new channel (its publishes awaiting a confirm are
        sent again, as after any channel loss)."""
        async with self._publisher_lock:
            if self._publisher is not publisher:
                return
            self._publisher = None
        with contextlib.suppress(*_GONE_OR_SLOW):
            await asyncio.wait_for(publisher.close(), _CLOSE_TIMEOUT)

    async def publish(self, queue: str, body: bytes) -> None:
        """Return once the broker has confirmed the message (persistent,
        durable queue). A message the server does not confirm, or nacks (a
        quorum queue without a leader while a node is lost, a queue full
        with reject-publish), is sent again, on a new channel, until ``publish_timeout``.

        :raises BrokerUnavailable: not confirmed within ``publish_timeout``.
        :raises BrokerError: the server returned it (its queue is gone) or
            refused its queue.
        """
        await self._publish(queue, body, headers=None)

    async def publish_many(self, queue: str, bodies: Iterable[bytes]) -> None:
        """Publish several messages with up to ``confirm_window`` confirms in
        flight (shared by the calls in flight at once, so that a caller may
        start the next batch while one is being confirmed); return once all
        are confirmed, or raise at the first failure."""
        pending = list(bodies)
        if not pending:
            return
        if queue not in self._declared:
            await self._publish(queue, pending[0], headers=None)  # declares the queue once
            pending = pending[1:]

        async def one(body: bytes) -> None:
            async with self._window:
                await self._publish(queue, body, headers=None)

        try:
            async with asyncio.TaskGroup() as group:
                for body in pending:
                    group.create_task(one(body))
        except ExceptionGroup as failed:  # the first failure, as publish would raise it
            raise failed.exceptions[0] from None

    async def _publish(
        self,
        queue: str,
        body: bytes,
        headers: dict[str, Any] | None,
        *,
        message_id: str | None = None,
    ) -> None:
        deadline = asyncio.get_running_loop().time() + self._publish_timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            connection = await self._connected(max(remaining, 0.001))
            try:
                publisher = await self._publisher_for(connection)
                if queue not in self._declared:
                    await self.declare(publisher, queue)
                message = aio_pika.Message(
                    body,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                    headers=headers,
                    message_id=message_id,
                    timestamp=datetime.now(UTC),
                )
                confirm = await publisher.default_exchange.publish(
                    message, routing_key=queue, mandatory=True, timeout=max(remaining, 0.001)
                )
            except _GONE_OR_SLOW as exc:
                if asyncio.get_running_loop().time() >= deadline:
                    raise BrokerUnavailable(
                        f"publish to {queue} not confirmed: {exc or type(exc).__name__}"
                    ) from exc
                # Not confirmed: send it again once the connection or channel is
                # back (it may then be there twice; consumers count each item once).
                await asyncio.sleep(0.05)
                continue
            except aio_pika.exceptions.DeliveryError as exc:
                if not isinstance(exc.frame, aiormq.spec.Basic.Nack):  # unroutable: returned
                    raise BrokerError(f"RabbitMQ refused a message for {queue}: {exc}") from exc
                # A nack: the queue could not take it now (a quorum queue
                # electing a leader after its node was lost, or full with
                # overflow reject-publish). Send it again until the deadline,
                # on a new channel: one opened while the leader's node was
                # being lost may keep nacking for good, a new one does not.
                await self._reopen_publisher(publisher)
                if asyncio.get_running_loop().time() >= deadline:
                    raise BrokerUnavailable(
                        f"publish to {queue} not confirmed: the server nacked it"
                        f" for {self._publish_timeout:g} s"
                    ) from exc
                logger.warning(
                    "RabbitMQ nacked a message for %s; sending it again",
                    queue,
                    extra={"action": "publish_nacked", "queue": queue},
                )
                await asyncio.sleep(0.2)
                continue
            if not isinstance(confirm, aiormq.spec.Basic.Ack):
                raise BrokerError(f"RabbitMQ did not take a message for {queue}: {confirm!r}")
            return

    async def dead_letter(
        self, queue: str, message: AbstractIncomingMessage, reason: str, *, delivery_count: int
    ) -> None:
        """Copy a rejected message to ``queue``'s dead-letter queue with
        ``reason`` and the queue in its headers, and ``delivery_count`` on a
        quorum queue only: there it is the server's count of deliveries, exact;
        a classic queue only says whether a message was delivered before, so
        its dead letters go without a count rather than with a wrong one (a
        count the message carried from an earlier dead-lettering is removed).

        :raises BrokerError: the copy was not confirmed (or was refused).
        """
        headers = dict(message.headers or {})
        headers[REASON_HEADER] = reason[:1000]
        headers[SOURCE_HEADER] = queue
        headers.pop(COUNT_HEADER, None)
        if self.queue_type == "quorum":
            headers[COUNT_HEADER] = delivery_count
        headers[DIED_HEADER] = datetime.now(UTC).isoformat()
        await self._publish(
            dead_letter_queue(queue), message.body, headers=headers, message_id=uuid.uuid4().hex
        )
        log_dead_letter(queue, reason)

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> _RabbitSubscription:
        """Consume ``queue`` on a channel of its own with ``prefetch`` unacked at most."""
        if prefetch < 1:
            raise BrokerError(f"prefetch must be at least 1, not {prefetch}")
        connection = await self._connected(30.0)
        subscription = _RabbitSubscription(self, queue, handler, prefetch)
        self._subscriptions.append(subscription)
        try:
            await subscription.start(connection)
        except _REFUSED as exc:  # other settings, no access, not found…
            self.forget(subscription)
            if isinstance(exc, QueueRefused):
                raise
            raise QueueRefused(f"cannot consume {queue}: {exc}") from exc
        except _GONE_OR_SLOW:
            pass  # the connection went: the supervisor starts it on the next one
        return subscription

    async def restart(
        self, subscription: _RabbitSubscription, *, close: AbstractChannel | None = None
    ) -> None:
        """Start ``subscription`` again on the current connection, retrying with
        backoff (once the connection is lost, the supervisor does it)."""
        if close is not None and not close.is_closed:
            with contextlib.suppress(*_GONE_OR_SLOW):
                await asyncio.wait_for(close.close(), 5.0)
        backoff = self._backoff()
        while not subscription.stopping:
            await backoff.wait()
            connection = self._connection
            if connection is None or _gone(connection):
                return
            try:
                await subscription.start(connection)
                return
            except _REFUSED as exc:
                self._refuse(subscription, exc)
                return
            except _GONE_OR_SLOW as exc:
                logger.warning("cannot consume %s again (%s); retrying", subscription.queue, exc)

    def forget(self, subscription: _RabbitSubscription) -> None:
        """Do not start ``subscription`` again after a reconnection."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    async def in_flight(self, queue: str, *, within: float = 30.0) -> int:
        """Messages ready in ``queue`` plus those this process holds unsettled
        on a channel still open (a delivery of a lost channel is back in the
        queue, so counted once). A connection lost while asking is waited
        for and asked again, for up to ``within`` seconds in all.

        AMQP does not tell how many messages other processes hold unacked.

        :raises BrokerUnavailable: no answer within ``within`` seconds.
        :raises BrokerError: the queue exists with other settings, or the
            server refused it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            connection = await self._connected(max(deadline - loop.time(), 0.001))
            try:
                ready = await self._ready_in(connection, queue)
            except _REFUSED as exc:
                if isinstance(exc, BrokerError):
                    raise
                raise BrokerError(f"RabbitMQ refused queue {queue}: {exc}") from exc
            except _GONE_OR_SLOW as exc:
                if loop.time() >= deadline:
                    raise BrokerUnavailable(
                        f"cannot count the messages of {queue} within {within:g} s: {exc!r}"
                    ) from exc
                await asyncio.sleep(0.05)  # the supervisor reconnects meanwhile
                continue
            held = sum(s.unsettled for s in self._subscriptions if s.queue == queue)
            return ready + held

    async def _ready_in(self, connection: AbstractConnection, queue: str) -> int:
        """The messages ready in ``queue``, asked on a channel of its own."""
        channel = await _open_channel(connection, publisher_confirms=False)
        try:
            declared = await self.declare(channel, queue)
            return declared.declaration_result.message_count or 0
        finally:
            with contextlib.suppress(*_GONE):
                await channel.close()

    @contextlib.asynccontextmanager
    async def _side_channel(self, within: float) -> AsyncIterator[AbstractChannel]:
        """A channel of its own for one operation, closed after it (the
        server then takes back what it holds unacked).

        :raises BrokerUnavailable: no connection within ``within`` seconds,
            or it was lost during the operation.
        """
        connection = await self._connected(within)
        try:
            channel = await _open_channel(connection, publisher_confirms=False)
        except _GONE_OR_SLOW as exc:
            raise BrokerUnavailable(f"cannot open a channel to RabbitMQ: {exc!r}") from exc
        try:
            yield channel
        except _GONE_OR_SLOW as exc:
            raise BrokerUnavailable(f"the RabbitMQ channel was lost: {exc!r}") from exc
        finally:
            with contextlib.suppress(*_GONE_OR_SLOW):
                await asyncio.wait_for(channel.close(), _CLOSE_TIMEOUT)

    async def queue_stats(self, queue: str, *, within: float = 10.0) -> QueueStats:
        """The ready messages and consumers of ``queue``, from a passive
        declare (it is not created; a queue that does not exist has none).
        AMQP tells neither the messages other processes hold unacked nor
        the age of the oldest message: both None. With a management API,
        its numbers instead (sampled by the server, every 5 s by default),
        unacked included, and the oldest message's age where the server
        tells it (a classic queue's head); if it does not answer, AMQP's.

        :raises BrokerUnavailable: no answer within ``within`` seconds.
        """
        if self._management is not None:
            vhost = unquote(urlsplit(self._url).path[1:]) or "/"
            try:
                return await self._management.queue_stats(vhost, queue)
            except (OSError, ValueError) as exc:
                logger.warning(
                    "RabbitMQ's management API at %s did not answer for %s (%s); asking AMQP",
                    self._management.where,
                    queue,
                    exc,
                    extra={"action": "management_unavailable", "queue": queue},
                )
        async with self._side_channel(within) as channel:
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return QueueStats(queue, 0, 0)
        result = declared.declaration_result
        return QueueStats(queue, result.message_count or 0, result.consumer_count or 0)

    async def _held_dead(
        self, channel: AbstractChannel, queue: str, within: float
    ) -> list[tuple[DeadMessage, AbstractIncomingMessage]]:
        """Take every message of ``queue``'s dead-letter queue on ``channel``,
        unacked and in order: they go back when it closes, unless acked.

        All of them, never some: a quorum queue puts a message given back
        behind the others given back before, so returning only the first
        few would move them to the end; returning all of them, in the order
        taken, keeps the order. One ``basic.consume`` with a prefetch of the
        whole queue takes them in a few round trips. While another listing
        holds the queue (it consumes it), this one waits for it a moment,
        so that the two do not split the messages between them.

        :raises TooManyDeadLetters: more than :data:`MAX_HELD_DEAD`.
        """
        name = dead_letter_queue(queue)
        loop = asyncio.get_running_loop()
        patience = loop.time() + _HELD_PATIENCE
        while True:
            try:
                dead = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return []
            declared = dead.declaration_result
            if not declared.consumer_count or loop.time() >= patience:
                break
            await asyncio.sleep(0.05)
        count = declared.message_count or 0
        if count < 1:
            return []
        if count > MAX_HELD_DEAD:
            raise TooManyDeadLetters(
                f"{name} holds {count} dead letters, more than the {MAX_HELD_DEAD} jobtrack"
                " lists, sends back or drops at once: move or purge some with RabbitMQ's"
                " own tools first"
            )
        await channel.set_qos(prefetch_count=count)
        taken: list[AbstractIncomingMessage] = []
        every = asyncio.Event()

        async def take(message: AbstractIncomingMessage) -> None:
            taken.append(message)
            if len(taken) >= count:
                every.set()

        tag = await dead.consume(take)
        # Fewer than counted come when another process took some meanwhile:
        # then wait only while they keep coming.
        deadline, seen = loop.time() + within, -1
        while not every.is_set() and len(taken) > seen and loop.time() < deadline:
            seen = len(taken)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(every.wait(), _HELD_IDLE)
        await dead.cancel(tag)
        taken.sort(key=lambda message: message.delivery_tag or 0)
        return [(_dead_message(message), message) for message in taken]

    async def dead_messages(
        self, queue: str, *, limit: int, within: float = 10.0
    ) -> list[DeadMessage]:
        """The first ``limit`` messages of ``queue``'s dead-letter queue,
        oldest first. Every one is taken unacked on a channel of its own, in
        order, then given back by closing it (none is lost: the dead-letter
        queue has no delivery limit), so a listing changes neither the
        order nor the count.

        :raises TooManyDeadLetters: more than :data:`MAX_HELD_DEAD`.
        :raises BrokerUnavailable: no answer within ``within`` seconds.
        """
        if limit < 1:
            return []
        held: list[tuple[DeadMessage, AbstractIncomingMessage]] = []
        try:
            async with self._side_channel(within) as channel:
                held = await self._held_dead(channel, queue, within)
                return [listed for listed, _ in held[:limit]]
        finally:
            await self._returned(dead_letter_queue(queue), len(held), within)

    async def _returned(self, queue: str, count: int, within: float) -> None:
        """Wait until ``queue`` counts at least ``count`` messages again: a
        closed channel's messages go back to a quorum queue after the close
        is confirmed, and a caller counting at once must see them."""
        if count < 1:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        with contextlib.suppress(BrokerError):
            while (await self.queue_stats(queue, within=within)).messages < count:
                if loop.time() >= deadline:
                    logger.warning("%s still counts fewer than the %d returned", queue, count)
                    return
                await asyncio.sleep(0.02)

    async def settle_dead(
        self,
        queue: str,
        ids: Collection[str] | None,
        *,
        requeue: bool,
        most: int | None = None,
        within: float = 10.0,
    ) -> list[DeadMessage]:
        """Take the messages ``ids`` (None: all, or the first ``most``) out
        of ``queue``'s dead-letter queue. Every dead letter is held unacked
        on a channel of its own; with ``requeue`` each chosen body is
        published back to ``queue`` (confirmed; its message id the dead
        letter's, in an ``x-jobtrack-requeued-from`` header the dead-letter
        queue) before its dead copy is acked; without, it is acked
        (dropped). Closing the channel gives back the others, in order. An
        id not found is looked for again for a moment: another process's
        listing may hold it.

        :raises NotFound: an id is not in the dead-letter queue (named;
            nothing is taken).
        :raises TooManyDeadLetters: more than :data:`MAX_HELD_DEAD`.
        :raises PartlySettled: the broker was lost part way (what was taken
            and what was not).
        :raises BrokerUnavailable: no answer within ``within`` seconds.
        """
        loop = asyncio.get_running_loop()
        patience = loop.time() + _HELD_PATIENCE
        while True:
            returned = 0
            try:
                async with self._side_channel(within) as channel:
                    held = await self._held_dead(channel, queue, within)
                    returned = len(held)
                    chosen = _chosen(held, ids, most)
                    missing = sorted(chosen.difference(listed.id for listed, _ in held))
                    if not missing:
                        taken = await self._take(queue, held, chosen, requeue=requeue)
                        returned -= len(taken)
                        return taken
            except PartlySettled as exc:
                returned -= len(exc.taken)
                raise
            finally:
                await self._returned(dead_letter_queue(queue), returned, within)
            if loop.time() >= patience:
                raise NotFound(
                    f"no dead letter {clip(', '.join(missing))} in {dead_letter_queue(queue)}"
                )
            await asyncio.sleep(0.1)

    async def _take(
        self,
        queue: str,
        held: list[tuple[DeadMessage, AbstractIncomingMessage]],
        chosen: set[str],
        *,
        requeue: bool,
    ) -> list[DeadMessage]:
        """Send back (or drop) the ``chosen`` of ``held``, in order.

        :raises PartlySettled: the broker was lost part way.
        """
        taken: list[DeadMessage] = []
        try:
            for listed, message in held:
                if listed.id not in chosen:
                    continue
                if requeue:
                    headers = {REQUEUED_HEADER: dead_letter_queue(queue)}
                    await self._publish(queue, listed.body, headers, message_id=listed.id)
                await message.ack()
                taken.append(listed)
        except _LOST_SETTLING as exc:
            done = {listed.id for listed in taken}
            not_taken = [listed.id for listed, _ in held if listed.id in chosen - done]
            what = "sent back" if requeue else "dropped"
            raise PartlySettled(
                f"{len(taken)} of {len(chosen)} dead letters of {dead_letter_queue(queue)}"
                f" {what} before the broker was lost ({exc!r}); the other {len(not_taken)}"
                " are still dead letters",
                taken=taken,
                not_taken=not_taken,
            ) from exc
        return taken

    async def aclose(self) -> None:
        """Stop every subscription and close the connection."""
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(*_GONE_OR_SLOW):
                await asyncio.wait_for(connection.close(), 5.0)


def _chosen(
    held: list[tuple[DeadMessage, AbstractIncomingMessage]],
    ids: Collection[str] | None,
    most: int | None,
) -> set[str]:
    """The ids to take: ``ids``, or (None) the first ``most`` held (all)."""
    if ids is not None:
        return set(ids)
    return {listed.id for listed, _ in held[:most]}


def _dead_message(message: AbstractIncomingMessage) -> DeadMessage:
    """A message of a dead-letter queue as listed: its id (the one given
    when jobtrack dead-lettered it, else one derived from its body and
    headers), reason, count and death from jobtrack's headers, else from the
    server's ``x-death`` (a message the server dead-lettered itself)."""
    headers = dict(message.headers or {})
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    raw_reason = headers.get(REASON_HEADER)
    if isinstance(raw_reason, bytes):
        raw_reason = raw_reason.decode("utf-8", "replace")
    if isinstance(raw_reason, str):
        reason = raw_reason
    else:
        server_reason = death.get("reason", "unknown")
        if isinstance(server_reason, bytes):
            server_reason = server_reason.decode("utf-8", "replace")
        reason = f"dead-lettered by the server: {server_reason}"
    count = headers.get(COUNT_HEADER)
    died: datetime | None = None
    raw_died = headers.get(DIED_HEADER)
    if isinstance(raw_died, bytes):
        raw_died = raw_died.decode("ascii", "replace")
    if isinstance(raw_died, str):
        with contextlib.suppress(ValueError):
            died = datetime.fromisoformat(raw_died)
    else:
        when = death.get("time")
        if isinstance(when, datetime):
            died = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    stable = {k: v for k, v in headers.items() if k not in _VOLATILE_HEADERS}
    ident = message.message_id or dead_message_id(message.body, stable)
    return DeadMessage(
        ident,
        message.body,
        reason,
        count if isinstance(count, int) and not isinstance(count, bool) else None,
        died,
    )


class _Management:
    """RabbitMQ's management API, asked for one queue's numbers at a time
    (in a thread: the standard library's HTTP client blocks)."""

    def __init__(self, url: str) -> None:
        refused = ConfigurationError(
            f"bad RabbitMQ management URL {masked_url(url)}: use http://user:password@host:15672",
            setting="JOBTRACK_BROKER_MANAGEMENT_URL",
        )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise refused from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise refused
        user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
        self._base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"
        self.where = masked_url(url)

    async def queue_stats(self, vhost: str, queue: str) -> QueueStats:
        """``queue``'s numbers in ``vhost`` (none for a queue that does not exist).

        :raises OSError: the API did not answer, or refused (an HTTP error).
        :raises ValueError: its answer is not the JSON of a queue.
        """
        found = await asyncio.to_thread(self._get, vhost, queue)
        if found is None:
            return QueueStats(queue, 0, 0)
        head = found.get("head_message_timestamp")
        oldest = None
        if isinstance(head, int | float) and not isinstance(head, bool) and head > 0:
            oldest = max(datetime.now(UTC).timestamp() - float(head), 0.0)
        return QueueStats(
            queue,
            _whole(found.get("messages_ready")),
            _whole(found.get("consumers")),
            _whole(found.get("messages_unacknowledged")),
            oldest,
        )

    def _get(self, vhost: str, queue: str) -> dict[str, Any] | None:
        url = f"{self._base}/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}"
        request = urllib.request.Request(
            url, headers={"Authorization": self._authorization, "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5.0) as answer:
                found = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise OSError(f"HTTP {exc.code} {exc.reason}") from None
        if not isinstance(found, dict):
            raise ValueError("not a queue's JSON")
        return found


def _whole(value: object) -> int:
    """A count from the management API's JSON (0 when missing: not sampled yet)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
