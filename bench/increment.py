"""Benchmark: the cost of one tracked increment on SQLite, against bare UPDATEs.

Usage::

    python -m bench.increment [--items 20000] [--runs 5]

Each run, on a fresh database file, times (in this order, on one stage):

floor-counter
    ``UPDATE stages SET completed_items = completed_items + 1 WHERE …`` in a
    loop on the same table: the least a per-item write can do.
floor-counter+updated_at
    the same, also moving ``updated_at`` to the current time, as every
    progress write must for the stuck-job query to see activity (the seed's
    ``UpdateAsync`` does the same).
store.increment
    ``SqliteJobStore.increment``: the one ``UPDATE … RETURNING`` with the
    stage rules and the triggers that derive the job's status.
tracker.increment
    ``ProgressTracker(coalesce=False).increment``: one write per item, as the
    seed describes.
tracker.increment+key
    the same with an item key (counted once).
tracker.add, tracker.add+key
    the default, coalesced tracker as the rendition consumers use it: ``add``
    folds the item in memory and a flush writes everything every 100 ms; the
    time includes the final flush, so it is the whole cost per item.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.report import RESULTS, summary, table, write
from jobtrack.model import utc_now
from jobtrack.store import SqliteJobStore
from jobtrack.store.sqlite.database import to_micros
from jobtrack.tracking import ProgressTracker

VARIANTS = (
    "floor-counter",
    "floor-counter+updated_at",
    "store.increment",
    "tracker.increment",
    "tracker.increment+key",
    "tracker.add",
    "tracker.add+key",
)


async def one_run(folder: Path, items: int) -> dict[str, float]:
    """Microseconds per increment of each variant, on a fresh database."""
    store = SqliteJobStore.open(str(folder / "bench.db"))
    job = await store.create_job("bench", ["a"])
    await store.raise_total(job.id, "a", by=10 * items * len(VARIANTS))
    conn = store.database.connection
    tracker = ProgressTracker(store, coalesce=False, log_every=10**9)
    coalesced = ProgressTracker(store, log_every=10**9)
    params = (job.id, "a")
    counter = (
        "UPDATE stages SET completed_items = completed_items + 1 WHERE job_id = ? AND name = ?"
    )
    moving = (
        "UPDATE stages SET completed_items = completed_items + 1, updated_at = ?"
        " WHERE job_id = ? AND name = ?"
    )

    async def floor_counter(_: int) -> None:
        conn.execute(counter, params)

    async def floor_moving(_: int) -> None:
        conn.execute(moving, (to_micros(utc_now()), *params))

    async def store_increment(_: int) -> None:
        await store.increment(job.id, "a")

    async def tracker_increment(_: int) -> None:
        await tracker.increment(job.id, "a")

    async def tracker_keyed(i: int) -> None:
        await tracker.increment(job.id, "a", item_key=f"item-{i}")

    async def tracker_add(_: int) -> None:
        coalesced.add(job.id, "a")

    async def tracker_add_keyed(i: int) -> None:
        coalesced.add(job.id, "a", item_key=f"added-{i}")

    bodies: dict[str, Callable[[int], Awaitable[None]]] = {
        "floor-counter": floor_counter,
        "floor-counter+updated_at": floor_moving,
        "store.increment": store_increment,
        "tracker.increment": tracker_increment,
        "tracker.increment+key": tracker_keyed,
        "tracker.add": tracker_add,
        "tracker.add+key": tracker_add_keyed,
    }
    micros = {}
    for name in VARIANTS:
        body = bodies[name]
        for i in range(items // 10):  # warm-up
            await body(-i - 1)
        await coalesced.flush(max_wait=60)
        start = time.perf_counter()
        for i in range(items):
            await body(i)
        await coalesced.flush(max_wait=60)  # the coalesced items are durable only now
        micros[name] = (time.perf_counter() - start) / items * 1e6
    final = (await store.get_job(job.id)).stage("a")
    expected_counted = (items + items // 10) * len(VARIANTS)
    assert final.completed_items == expected_counted, (final.completed_items, expected_counted)
    await store.aclose()
    return micros


def _spread(result: dict[str, float]) -> str:
    return f"{result['median']:.1f} ({result['min']:.1f}-{result['max']:.1f})"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write bench/results/increment.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder")
    args = parser.parse_args(argv)
    runs: list[dict[str, float]] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as folder:
            runs.append(asyncio.run(one_run(Path(folder), args.items)))
    results = {name: summary([run[name] for run in runs]) for name in VARIANTS}
    # Ratios within each run (same file, same moment), then their median.
    ratios = {
        name: {
            floor: summary([run[name] / run[floor] for run in runs])
            for floor in ("floor-counter", "floor-counter+updated_at")
        }
        for name in VARIANTS[2:]
    }
    rows = [
        [
            name,
            _spread(results[name]),
            f"{ratios[name]['floor-counter']['median']:.2f}x" if name in ratios else "",
            f"{ratios[name]['floor-counter+updated_at']['median']:.2f}x" if name in ratios else "",
        ]
        for name in VARIANTS
    ]
    markdown = (
        "# One progress increment on SQLite\n\n"
        f"{args.items} increments per variant per run, {args.runs} runs, one process, WAL, "
        "synchronous=NORMAL. Median (min-max) µs per increment; ratios are medians of "
        "per-run ratios.\n\n"
        + table(["variant", "µs per increment", "vs floor-counter", "vs floor+updated_at"], rows)
    )
    data = {"items": args.items, "results": results, "ratios": ratios}
    write("increment", data, markdown, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
