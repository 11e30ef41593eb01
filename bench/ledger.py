"""Benchmark: items a producer records in the item ledger per second.

Usage::

    python -m bench.ledger [--items 200000] [--batches 1000,10000] [--runs 5]
                           [--backends sqlite,postgres] [--orders ordered,random]
                           [--out DIR]

One producer (one process, one store) adds ``--items`` items to one job's
stage with ``JobStore.add_items``, ``--batches`` items a call, each item a
key and a small JSON payload (a path and a size), and seals the stage with
the last batch. The keys come in order (``item-000000001``…, a producer
numbering its items or walking a sorted listing) or in no order
(``random``: a hash of the index), the worst case for the ledger's key
index: each batch then touches pages all over it, and on SQLite the pages
written make the WAL checkpoints (an fsync each) the larger part of the
time. There, a batch of 1,000 random keys writes about as many 4 KiB index
pages to the WAL; batches of 10,000 share pages and are about 2.5 times
faster. (Raising SQLite's ``wal_autocheckpoint`` from 1,000 to 10,000 pages
took the random 1,000 case from about 22,000 to 32,000 items/s in one
trial; the store keeps SQLite's default.)

Each run is on a fresh store (PostgreSQL: a database of its own, created
and dropped here, on ``$JOBTRACK_BENCH_POSTGRES_URL``, default the
local server). Measured per run:

add
    items recorded per second, the job and its stage raised batch by batch.
re-add
    the same batches again (a producer run twice): every key is in the
    ledger already, nothing is new, the total stays.
missing
    the ledger read back as the monitor reads it, ``missing_items`` pages of
    1,000 in key order (nothing counted: every item is missing).

Every run checks the exact figures at the end: the stage's total is the
number of items and sealed, the re-add added 0, the tally and the pages
read back hold every item once. Medians of the runs are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bench.report import RESULTS, summary, table, write
from jobtrack.store import JobStore, open_store
from jobtrack.store.ledger import LedgerItem, LedgerTally

ADMIN_URL = os.environ.get(
    "JOBTRACK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
STAGE = "items"
PAGE = 1000
TARGET = 50_000  # items a second, each backend, each batch size


@contextmanager
def backend(name: str) -> Iterator[str]:
    """A fresh store of the named backend; yields its URL."""
    if name == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    database = f"jobtrack_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + database
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def key(index: int, order: str) -> str:
    """The key of item ``index``: numbered (``ordered``) or a hash (``random``)."""
    if order == "ordered":
        return f"item-{index:09}"
    return uuid.uuid5(uuid.NAMESPACE_OID, str(index)).hex


def batches(items: int, batch: int, order: str) -> list[list[LedgerItem]]:
    """The producer's batches, keys in the given order, payloads small."""
    made = [LedgerItem(key(i, order), {"path": f"/data/{i}.jpg", "size": i}) for i in range(items)]
    return [made[start : start + batch] for start in range(0, items, batch)]


async def _add_all(store: JobStore, job_id: str, work: list[list[LedgerItem]]) -> tuple[int, float]:
    started = time.perf_counter()
    added = 0
    for index, batch in enumerate(work):
        added += await store.add_items(job_id, STAGE, batch, seal=index == len(work) - 1)
    return added, time.perf_counter() - started


async def _read_missing(store: JobStore, job_id: str) -> tuple[int, int, float]:
    started = time.perf_counter()
    seen, after = 0, None
    distinct: set[str] = set()
    while page := await store.missing_items(job_id, STAGE, after=after, limit=PAGE):
        seen += len(page)
        distinct.update(item.key for item in page)
        after = page[-1].key
    return seen, len(distinct), time.perf_counter() - started


async def one_run(url: str, items: int, batch: int, order: str) -> dict[str, Any]:
    """One producer on a fresh store: the rates, and whether every figure
    came out exact."""
    work = batches(items, batch, order)
    store = open_store(url)
    try:
        job_id = (await store.create_job("bench", [STAGE])).id
        added, add_seconds = await _add_all(store, job_id, work)
        readded, readd_seconds = await _add_all(store, job_id, work)
        seen, distinct, read_seconds = await _read_missing(store, job_id)
        stage = (await store.get_job(job_id)).stages[STAGE]
        tally = await store.tally_ledger(job_id)
    finally:
        await store.aclose()
    exact = (
        added == items
        and readded == 0
        and stage.total_items == items
        and stage.total_final
        and tally == {STAGE: LedgerTally(items, 0, 0)}
        and seen == distinct == items
    )
    return {
        "add_per_second": items / add_seconds,
        "readd_per_second": items / readd_seconds,
        "missing_per_second": items / read_seconds,
        "exact": exact,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ledger.{json,md} under bench/results/ledger/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--batches", default="1000,10000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--orders", default="ordered,random")
    parser.add_argument("--out", type=Path, default=RESULTS / "ledger")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {}
    for run in range(args.runs):
        for name in args.backends.split(","):
            for order in args.orders.split(","):
                for batch in (int(b) for b in args.batches.split(",")):
                    with backend(name) as url:
                        result = asyncio.run(one_run(url, args.items, batch, order))
                    runs.setdefault(f"{name}|{order}|{batch}", []).append(result)
                    _print(run, f"{name} {order} keys, batch {batch}:", result)
    _report(runs, args)
    return 0 if all(s["exact"] for samples in runs.values() for s in samples) else 1


def _print(run: int, what: str, result: dict[str, Any]) -> None:
    print(
        f"run {run + 1} {what}",
        f"add {result['add_per_second']:,.0f}/s,",
        f"re-add {result['readd_per_second']:,.0f}/s,",
        f"missing {result['missing_per_second']:,.0f}/s,",
        "exact" if result["exact"] else "NOT EXACT",
        flush=True,
    )


def _report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    results: dict[str, Any] = {}
    rows = []
    for key, samples in runs.items():
        name, order, batch = key.split("|")
        entry = {
            measure: summary([s[f"{measure}_per_second"] for s in samples])
            for measure in ("add", "readd", "missing")
        }
        exact = all(s["exact"] for s in samples)
        results[key] = {**entry, "exact": exact}
        add = entry["add"]
        rows.append(
            [
                name,
                order,
                f"{int(batch):,}",
                f"{add['median']:,.0f} ({add['min']:,.0f}-{add['max']:,.0f})",
                "yes" if add["median"] >= TARGET else "NO",
                f"{entry['readd']['median']:,.0f}",
                f"{entry['missing']['median']:,.0f}",
                "yes" if exact else "NO",
            ]
        )
    markdown = (
        "# Item ledger: items recorded per second\n\n"
        f"One producer adds {args.items:,} items (a key and a small JSON payload each) to one "
        f"job's stage with `add_items`, in batches; {args.runs} runs, each on a fresh store, "
        "medians (min-max) of items per second. Re-add: the same batches again, nothing new. "
        f"Missing: the ledger read back in pages of {PAGE:,} (`missing_items`). Exact: the "
        "stage's sealed total, the re-add's 0, the tally and the pages all equal the items "
        "added. Keys ordered: numbered; random: hashes, each batch all over the key index. "
        f"Target: {TARGET:,} items/s.\n\n"
        + table(
            [
                "backend",
                "keys",
                "batch",
                "add items/s",
                "≥ target",
                "re-add items/s",
                "missing items/s",
                "exact",
            ],
            rows,
        )
    )
    write(
        "ledger",
        {"items": args.items, "runs": args.runs, "target": TARGET, "results": results},
        markdown,
        out=args.out,
    )


if __name__ == "__main__":
    raise SystemExit(main())
