"""The queues and dead letters through the HTTP API, served in process: on
the in-process broker and on RabbitMQ (a virtual host for each test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobtrack import App, Item, JobType, Settings
from jobtrack.api.app import create_app
from jobtrack.api.config import ApiConfig
from jobtrack.broker import Broker, Delivery, InMemoryBroker
from jobtrack.broker.base import DeadMessage
from jobtrack.errors import BrokerUnavailable, PartlySettled
from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.model import Job
from tests import rabbitmq
from tests.contract.test_broker_contract import until

pytestmark = pytest.mark.timeout(60)

TOKEN = "queues-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUEUE = "jobtrack.imports.rows"
DEAD = f"{QUEUE}.dead"
REASON = "rejected by the test"


def _nothing(item: Item) -> None:
    """A handler that does nothing."""


def _imports() -> JobType:
    imports = JobType("imports", ["rows"])
    imports.handler("rows")(_nothing)
    return imports


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ virtual host for this test alone (deleted after it)."""
    rabbitmq.require_server()
    with rabbitmq.scratch_vhost("queues_api") as name:
        yield name


@pytest.fixture(params=["memory", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each broker in turn."""
    if request.param == "memory":
        return "memory://"
    vhost: str = request.getfixturevalue("rabbitmq_vhost")
    return rabbitmq.vhost_url(vhost)


@asynccontextmanager
async def served(tmp_path: Path, broker_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, App]]:
    """The API of an app with the ``imports`` type, and the app it opened."""
    settings = Settings(
        data_dir=tmp_path, store_url=f"sqlite:///{tmp_path}/jobtrack.db", broker_url=broker_url
    )
    api = App(settings, job_types=[_imports()]).asgi(token=TOKEN)
    transport = httpx.ASGITransport(app=api)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        yield client, api.state.parts.app


async def dead_lettered(broker: Broker, bodies: list[bytes]) -> None:
    """``bodies`` published to the queue and each rejected by a consumer."""
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def reject(delivery: Delivery) -> None:
        await delivery.nack(requeue=False, reason=REASON)
        seen.put_nowait(delivery.body)

    await broker.publish_many(QUEUE, bodies)
    subscription = await broker.consume(QUEUE, reject, prefetch=1)
    async with asyncio.timeout(20):
        for _ in bodies:
            await seen.get()
    await subscription.cancel()


def item(job: Job, key: str) -> bytes:
    return encode_item(ItemMessage(job.id, "imports", "rows", key, {"row": key}))


def by_key(listed: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    return {entry["key"]: entry for entry in listed["dead_letters"]}


async def test_queues_and_dead_letters_are_listed_sent_back_and_dropped(
    tmp_path: Path, broker_url: str
) -> None:
    async with served(tmp_path, broker_url) as (client, app):
        job = await app.store.create_job("imports", ["rows"])
        await dead_lettered(app.broker, [item(job, "a"), item(job, "b"), b"not an item"])

        queues = (await client.get("/api/queues")).json()
        assert queues["broker"] == ("memory" if broker_url == "memory://" else "shared")
        [row] = queues["queues"]
        assert (row["queue"], row["job_type"], row["stage"]) == (QUEUE, "imports", "rows")
        assert (row["messages"], row["consumers"], row["dead_queue"], row["dead_letters"]) == (
            0,
            0,
            DEAD,
            3,
        )

        listed = (await client.get(f"/api/queues/{QUEUE}/dead")).json()
        assert (listed["queue"], listed["dead_queue"], listed["total"]) == (QUEUE, DEAD, 3)
        letters = by_key(listed)
        assert set(letters) == {"a", "b", None}
        assert letters["a"]["job_id"] == job.id
        assert letters["a"]["reason"] == REASON
        assert letters[None]["preview"] == "not an item"
        assert letters[None]["job_id"] is None
        assert (await client.get(f"/api/queues/{QUEUE}/dead?limit=1")).json()["total"] == 3
        assert (
            len((await client.get(f"/api/queues/{QUEUE}/dead?limit=1")).json()["dead_letters"]) == 1
        )

        refused = await client.post(
            f"/api/queues/{QUEUE}/dead/requeue", json={"ids": [letters["a"]["id"]]}
        )
        assert refused.status_code == 401
        unknown = await client.post(
            f"/api/queues/{QUEUE}/dead/requeue",
            json={"ids": [letters["a"]["id"], "no-such-id"]},
            headers=AUTH,
        )
        assert unknown.status_code == 404
        assert "no-such-id" in unknown.json()["error"]
        bodies: list[dict[str, Any]] = [
            {},
            {"ids": []},
            {"ids": [letters["a"]["id"]], "all": True},
            {"all": False},
        ]
        for body in bodies:
            refused_body = await client.post(
                f"/api/queues/{QUEUE}/dead/drop", json=body, headers=AUTH
            )
            assert refused_body.status_code == 422, body
        assert (await client.get(f"/api/queues/{QUEUE}/dead")).json()["total"] == 3

        sent = await client.post(
            f"/api/queues/{QUEUE}/dead/requeue",
            json={"ids": [letters["a"]["id"], letters[None]["id"]]},
            headers=AUTH,
        )
        assert sent.status_code == 200
        assert sent.json()["action"] == "requeued"
        assert sorted(d["id"] for d in sent.json()["dead_letters"]) == sorted(
            [letters["a"]["id"], letters[None]["id"]]
        )
        dropped = await client.post(
            f"/api/queues/{QUEUE}/dead/drop", json={"ids": [letters["b"]["id"]]}, headers=AUTH
        )
        assert dropped.status_code == 200

        [row] = (await client.get("/api/queues")).json()["queues"]
        assert (row["messages"], row["dead_letters"]) == (2, 0)
        events = (await client.get(f"/api/jobs/{job.id}/events")).json()["events"]
        assert len(events) == 2  # none for the message that is not an item
        kinds = [
            (e["kind"], letters[key]["id"] in e["message"])
            for e, key in zip(events, "ab", strict=True)
        ]
        assert kinds == [("requeued", True), ("dropped", True)]
        assert "the API" in events[0]["message"]


async def test_a_queue_not_of_the_app_is_a_404(tmp_path: Path) -> None:
    async with served(tmp_path, "memory://") as (client, _):
        listed = await client.get("/api/queues/jobtrack.other.rows/dead")
        sent = await client.post(
            "/api/queues/jobtrack.other.rows/dead/drop", json={"all": True}, headers=AUTH
        )
    assert listed.status_code == 404
    assert "jobtrack.other.rows" in listed.json()["error"]
    assert QUEUE in listed.json()["error"]  # the app's queues are named
    assert sent.status_code == 404


async def test_the_metrics_show_each_queue(tmp_path: Path) -> None:
    async with served(tmp_path, "memory://") as (client, app):
        job = await app.store.create_job("imports", ["rows"])
        await dead_lettered(app.broker, [item(job, "a")])
        await app.broker.publish(QUEUE, item(job, "b"))
        text = (await client.get("/metrics")).text
    assert f'jobtrack_queue_messages{{queue="{QUEUE}"}} 1.0' in text
    assert f'jobtrack_queue_consumers{{queue="{QUEUE}"}} 0.0' in text
    assert f'jobtrack_queue_unacked{{queue="{QUEUE}"}} 0.0' in text
    assert f'jobtrack_queue_oldest_seconds{{queue="{QUEUE}"}}' in text
    assert f'jobtrack_dead_letters{{queue="{QUEUE}"}} 1.0' in text


async def test_rabbitmq_metrics_leave_out_what_it_does_not_tell(
    tmp_path: Path, rabbitmq_vhost: str
) -> None:
    async with served(tmp_path, rabbitmq.vhost_url(rabbitmq_vhost)) as (client, app):
        job = await app.store.create_job("imports", ["rows"])
        await app.broker.publish(QUEUE, item(job, "b"))
        text = (await client.get("/metrics")).text
        await app.broker.settle_dead(QUEUE, None, requeue=False)
    assert f'jobtrack_queue_messages{{queue="{QUEUE}"}} 1.0' in text
    assert "jobtrack_queue_unacked{" not in text
    assert "jobtrack_queue_oldest_seconds{" not in text


async def test_the_builtin_servers_scans_run_on_the_broker_it_shows(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path}/jobtrack.db")
    api = create_app(settings, ApiConfig(token=TOKEN))
    transport = httpx.ASGITransport(app=api)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        found = api.state.parts
        assert found.launcher.broker is found.app.broker
        listed = (await client.get("/api/queues")).json()
    assert listed["broker"] == "memory"
    assert [(q["queue"], q["stage"]) for q in listed["queues"]] == [
        ("jobtrack.thumbnail", "thumbnail"),
        ("jobtrack.cache", "cache"),
    ]


async def test_all_at_once_is_capped_and_says_how_many_remain(
    tmp_path: Path, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobtrack.runtime.queues.SETTLE_AT_ONCE", 2)
    async with served(tmp_path, broker_url) as (client, app):
        job = await app.store.create_job("imports", ["rows"])
        await dead_lettered(app.broker, [item(job, k) for k in "abc"])
        first = await client.post(
            f"/api/queues/{QUEUE}/dead/drop", json={"all": True}, headers=AUTH
        )
        assert first.status_code == 200
        assert [d["key"] for d in first.json()["dead_letters"]] == ["a", "b"]
        assert first.json()["remaining"] == 1
        rest = await client.post(f"/api/queues/{QUEUE}/dead/drop", json={"all": True}, headers=AUTH)
        assert ([d["key"] for d in rest.json()["dead_letters"]], rest.json()["remaining"]) == (
            ["c"],
            0,
        )


async def test_a_send_back_lost_part_way_answers_what_was_done_and_records_it(
    tmp_path: Path, broker_url: str
) -> None:
    async with served(tmp_path, broker_url) as (client, app):
        job = await app.store.create_job("imports", ["rows"])
        await dead_lettered(app.broker, [item(job, k) for k in "abc"])
        letters = by_key((await client.get(f"/api/queues/{QUEUE}/dead")).json())
        lose_after_one(app.broker)
        answer = await client.post(
            f"/api/queues/{QUEUE}/dead/requeue", json={"all": True}, headers=AUTH
        )
        assert answer.status_code == 503
        body = answer.json()
        assert "1 of 3" in body["error"]
        assert [d["key"] for d in body["dead_letters"]] == ["a"]
        assert body["not_done"] == [letters["b"]["id"], letters["c"]["id"]]
        events = (await client.get(f"/api/jobs/{job.id}/events")).json()["events"]
        assert [(e["kind"], letters["a"]["id"] in e["message"]) for e in events] == [
            ("requeued", True)
        ]
        [row] = (await client.get("/api/queues")).json()["queues"]
        assert (row["messages"], row["dead_letters"]) == (1, 2)


def lose_after_one(broker: Broker) -> None:
    """Make ``broker``'s next send-back lose the broker after one dead letter
    is sent back: RabbitMQ's second publish is not confirmed; the in-process
    broker answers as RabbitMQ then does."""
    from jobtrack.broker.rabbitmq import RabbitMQBroker

    if isinstance(broker, RabbitMQBroker):
        publish = broker._publish
        sent = 0

        async def publish_once(queue: str, body: bytes, headers: Any, **kwargs: Any) -> None:
            nonlocal sent
            if sent >= 1:
                raise BrokerUnavailable("publish not confirmed (lost by the test)")
            sent += 1
            await publish(queue, body, headers, **kwargs)

        broker._publish = publish_once  # type: ignore[method-assign]
        return
    assert isinstance(broker, InMemoryBroker)
    settle = broker.settle_dead

    async def settle_one(
        queue: str, ids: Any, *, requeue: bool, most: int | None = None
    ) -> list[DeadMessage]:
        listed = await broker.dead_messages(queue, limit=100)
        chosen = [d.id for d in listed if ids is None or d.id in ids][:most]
        taken = await settle(queue, chosen[:1], requeue=requeue)
        raise PartlySettled("1 of 3 sent back, then lost", taken=taken, not_taken=chosen[1:])

    broker.settle_dead = settle_one  # type: ignore[method-assign]


async def test_a_dead_letter_sent_back_twice_counts_once(tmp_path: Path, broker_url: str) -> None:
    """A send-back whose ack is lost after its publish leaves the item on
    the queue and still dead; sending it back again puts it there twice:
    the item counts once."""
    async with served(tmp_path, broker_url) as (client, app):
        async with app.start_job("imports") as producer:
            await producer.add("rows", [("a", {"row": "a"})])
        await dead_lettered_queue(app.broker)
        [letter] = (await client.get(f"/api/queues/{QUEUE}/dead")).json()["dead_letters"]
        sent = await client.post(
            f"/api/queues/{QUEUE}/dead/requeue", json={"ids": [letter["id"]]}, headers=AUTH
        )
        assert sent.status_code == 200
        body = encode_item(ItemMessage(producer.job.id, "imports", "rows", "a", {"row": "a"}))
        await app.broker.publish(QUEUE, body)  # the second send-back of the same dead letter

        async def worked() -> bool:
            job = await app.store.get_job(producer.job.id)
            idle = (await app.broker.queue_stats(QUEUE)).messages == 0
            return idle and job.status.value == "completed"

        async with app.working(concurrency=1):
            await until(worked)
            await asyncio.sleep(0.3)  # the duplicate, if it were counted, would be by now
        job = await app.store.get_job(producer.job.id)
        rows = job.stage("rows")
        assert (rows.total_items, rows.completed_items, rows.failed_items) == (1, 1, 0)


async def dead_lettered_queue(broker: Broker) -> None:
    """Every message now in the queue rejected once, to its dead-letter queue."""
    count = (await broker.queue_stats(QUEUE)).messages
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def reject(delivery: Delivery) -> None:
        await delivery.nack(requeue=False, reason=REASON)
        seen.put_nowait(delivery.body)

    subscription = await broker.consume(QUEUE, reject, prefetch=1)
    async with asyncio.timeout(20):
        for _ in range(count):
            await seen.get()
    await subscription.cancel()
