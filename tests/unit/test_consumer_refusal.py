"""A message whose item the store refuses is dead-lettered with the store's
reason, never acked as if its progress were stored."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec

from jobtrack.errors import StoreError
from jobtrack.jobs.messages import encode_item
from jobtrack.pipeline.stages import THUMBNAIL
from jobtrack.store import ProgressResult, StageProgress
from tests.unit.test_consumer import QUEUE, close, drain, setup


async def test_an_item_the_store_refuses_is_dead_lettered_with_the_reason(
    tmp_path: Path,
) -> None:
    job_id = "gone"  # no such job: the store refuses the item, and would again
    rig = await setup(tmp_path)
    broker, store, real_job, message = rig.broker, rig.store, rig.job_id, rig.message
    refused = msgspec.structs.replace(message, job_id=job_id)
    await broker.publish(QUEUE, encode_item(refused))
    await broker.publish(QUEUE, encode_item(message))
    await drain(broker)
    [dead] = broker.dead_letters[f"{QUEUE}.dead"]
    assert dead.body == encode_item(refused)
    assert dead.reason == f"job {job_id!r} not found"  # the store's answer, read before any work
    assert (await store.get_job(real_job)).stage(THUMBNAIL).completed_items == 1
    await close(rig)


async def test_a_stored_item_is_acked(tmp_path: Path) -> None:
    rig = await setup(tmp_path)
    broker, store, real_job, message = rig.broker, rig.store, rig.job_id, rig.message
    await broker.publish(QUEUE, encode_item(message))
    await drain(broker)
    assert not broker.dead_letters.get(f"{QUEUE}.dead")
    assert (await store.get_job(real_job)).stage(THUMBNAIL).completed_items == 1
    await close(rig)


async def test_a_store_fault_on_the_progress_write_holds_the_message_not_dead_letters_it(
    tmp_path: Path,
) -> None:
    rig = await setup(tmp_path)
    broker, store, real_job, message = rig.broker, rig.store, rig.job_id, rig.message
    real = store.add_progress
    calls = 0

    async def read_only_at_first(batch: Sequence[StageProgress]) -> list[ProgressResult]:
        nonlocal calls
        calls += 1
        if calls <= 2:  # a failover: the store is read-only for a while
            raise StoreError("PostgreSQL error: cannot execute UPDATE in a read-only transaction")
        return await real(batch)

    store.add_progress = read_only_at_first  # type: ignore[method-assign]
    await broker.publish(QUEUE, encode_item(message))
    await drain(broker)
    assert broker.dead_letters == {}
    assert calls == 3
    assert (await store.get_job(real_job)).stage(THUMBNAIL).completed_items == 1
    await close(rig)
