"""A message whose item the store refuses is dead-lettered with the store's
reason, never acked as if its progress were stored."""

from __future__ import annotations

from pathlib import Path

from jobtrack.pipeline.messages import StageMessage, encode_message
from jobtrack.pipeline.stages import THUMBNAIL
from tests.unit.test_consumer import QUEUE, drain, setup


async def test_an_item_the_store_refuses_is_dead_lettered_with_the_reason(
    tmp_path: Path,
) -> None:
    job_id = "gone"  # no such job: the store refuses the item, and would again
    broker, store, real_job, message = await setup(tmp_path)
    refused = StageMessage(
        job_id=job_id,
        collection_id=message.collection_id,
        image_id=message.image_id,
        stage=THUMBNAIL,
    )
    await broker.publish(QUEUE, encode_message(refused))
    await broker.publish(QUEUE, encode_message(message))
    await drain(broker)
    [dead] = broker.dead_letters[f"{QUEUE}.dead"]
    assert dead.body == encode_message(refused)
    assert dead.reason == f"progress refused by the store: job {job_id!r} not found"
    assert (await store.get_job(real_job)).stage(THUMBNAIL).completed_items == 1
    await broker.aclose()


async def test_a_stored_item_is_acked(tmp_path: Path) -> None:
    broker, store, real_job, message = await setup(tmp_path)
    await broker.publish(QUEUE, encode_message(message))
    await drain(broker)
    assert not broker.dead_letters.get(f"{QUEUE}.dead")
    assert (await store.get_job(real_job)).stage(THUMBNAIL).completed_items == 1
    await broker.aclose()
