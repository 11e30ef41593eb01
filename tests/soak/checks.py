"""The soak's end checks and its report (JSON and markdown).

Every check is exact: each job completed; each no-op job's counts equal
its items; against the truth table, no item lost (a key never done, or a
count below the keys done) and none counted twice (a count above the
keys done); each scan's counts equal its catalog's truth; each stream
client's last view of each job equal to the store's.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from jobtrack.errors import JobtrackError
from jobtrack.model import Job, JobStatus
from jobtrack.pipeline.stages import CACHE, SCAN, THUMBNAIL
from jobtrack.runtime import App
from jobtrack.store import JobQuery
from tests.soak.app import JOB_TYPE, STAGE
from tests.soak.faults import KINDS

if TYPE_CHECKING:
    from tests.soak.run import Soak

__all__ = [
    "HOSTILE_FAILED",
    "HOSTILE_GOOD",
    "check",
    "fault_summary",
    "faults_undone",
    "markdown",
    "percentile",
]

#: Images of the hostile collection that must fail (two bombs, an empty file).
HOSTILE_FAILED = 3
#: Its good images (the symlink out of it is not an image of it).
HOSTILE_GOOD = 3
#: Seconds the clients get to catch up with the store at the end.
CATCH_UP = 60.0


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return round(ordered[rank], 3)


def _check(name: str, ok: bool, detail: Any) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


async def _all_jobs(app: App) -> list[Job]:
    jobs: list[Job] = []
    offset = 0
    while True:
        page = await app.store.list_jobs(JobQuery(limit=500, offset=offset))
        jobs.extend(page)
        if len(page) < 500:
            return jobs
        offset += 500


def _truth(url: str) -> dict[str, dict[str, Any]]:
    query = """
        SELECT job_id, count(*), count(*) FILTER (WHERE executions > 1),
               max(executions), max(first_at)
        FROM soak_effects GROUP BY job_id
    """
    with psycopg.connect(url) as conn:
        rows = conn.execute(query).fetchall()
    return {
        row[0]: {"keys": row[1], "repeated": row[2], "max_executions": row[3], "last_first": row[4]}
        for row in rows
    }


async def check(
    soak: Soak,
    app: App,
    *,
    started_at: datetime,
    window_end_at: datetime,
    quiesced_in: float,
) -> dict[str, Any]:
    """Every end check of ``soak``, read from its store, truth and clients;
    the report's ``checks``, ``items``, ``latency``, ``jobs``, ``scans``
    and ``clients``."""
    jobs = {job.id: job for job in await _all_jobs(app)}
    results: list[dict[str, Any]] = []
    statuses = Counter(job.status.value for job in jobs.values())
    not_completed = {
        job_id: job.status.value
        for job_id, job in jobs.items()
        if job.status is not JobStatus.COMPLETED
    }
    results.append(_check("every job completed", not not_completed, not_completed or None))
    known = set(soak.soak_jobs) | set(soak.scan_jobs)
    strangers = sorted(set(jobs) - known)
    results.append(_check("no job but those the soak started", not strangers, strangers or None))
    results.append(
        _check(
            "every job produced whole",
            not soak.production_failures,
            soak.production_failures or None,
        )
    )
    missing = sorted(known - set(jobs))
    results.append(_check("every job the soak started is in the store", not missing, missing))

    items, latency, soak_checks = _check_soak_jobs(soak, jobs, window_end_at)
    results.extend(soak_checks)
    scans, scan_checks = await _check_scans(soak, app, jobs)
    results.extend(scan_checks)
    clients, client_checks = await _check_clients(soak, app)
    results.extend(client_checks)
    return {
        "started_at": started_at.isoformat(),
        "window_end_at": window_end_at.isoformat(),
        "quiesced_in_seconds": quiesced_in,
        "jobs": {
            "total": len(jobs),
            "by_status": dict(statuses),
            "soak": len(soak.soak_jobs),
            "scans": len(soak.scan_jobs),
        },
        "items": items,
        "latency": latency,
        "scans": scans,
        "clients": clients,
        "producer_retries": soak.production_retries,
        "checks": results,
    }


def _check_soak_jobs(
    soak: Soak, jobs: dict[str, Job], window_end_at: datetime
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    truth = _truth(soak.truth_url)
    expected = soak.plan.items
    lost: dict[str, int] = {}
    twice: dict[str, int] = {}
    wrong: dict[str, Any] = {}
    repeated = 0
    max_executions = 0
    during: list[float] = []
    after: list[float] = []
    durations: list[float] = []
    for job_id in soak.soak_jobs:
        job = jobs.get(job_id)
        done = truth.get(job_id, {"keys": 0, "repeated": 0, "max_executions": 0})
        repeated += done["repeated"]
        max_executions = max(max_executions, done["max_executions"])
        if job is None:
            continue
        stage = job.stage(STAGE)
        counts = (stage.total_items, stage.completed_items, stage.failed_items, stage.total_final)
        if counts != (expected, expected, 0, True):
            wrong[job_id] = counts
        if done["keys"] < expected or stage.completed_items < done["keys"]:
            lost[job_id] = max(expected - done["keys"], done["keys"] - stage.completed_items)
        if stage.completed_items > done["keys"]:
            twice[job_id] = stage.completed_items - done["keys"]
        if job.completed_at is not None:
            durations.append((job.completed_at - job.created_at).total_seconds())
        if job.completed_at is not None and done.get("last_first") is not None:
            took = (job.completed_at - done["last_first"]).total_seconds()
            (during if job.completed_at <= window_end_at else after).append(took)
    items = {
        "jobs": len(soak.soak_jobs),
        "expected": expected * len(soak.soak_jobs),
        "done_distinct": sum(truth.get(j, {"keys": 0})["keys"] for j in soak.soak_jobs),
        "done_more_than_once": repeated,
        "max_executions": max_executions,
        "lost": sum(lost.values()),
        "counted_twice": sum(twice.values()),
    }
    latency = {
        "during_faults": _spread(during),
        "after_faults": _spread(after),
        "all": _spread(during + after),
        "job_created_to_completed": _spread(durations),
    }
    checks = [
        _check(
            f"every {JOB_TYPE} job counts {expected} of {expected}, none failed, sealed",
            not wrong,
            wrong or None,
        ),
        _check("no item lost", not lost, lost or None),
        _check("no item counted twice", not twice, twice or None),
    ]
    return items, latency, checks


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "jobs": len(values),
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": round(max(values), 3) if values else None,
        "mean": round(statistics.fmean(values), 3) if values else None,
    }


async def _check_scans(
    soak: Soak, app: App, jobs: dict[str, Job]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every scan counts the hostile collection exactly (each image once at
    the scan stage, the good ones done and the hostile ones failed at the
    rendition stages); the last one, the collection's current job, also
    equals its catalog's truth (the reconciler's count)."""
    images = HOSTILE_GOOD + HOSTILE_FAILED
    expected = {
        SCAN: (images, images, 0),
        THUMBNAIL: (images, HOSTILE_GOOD, HOSTILE_FAILED),
        CACHE: (images, HOSTILE_GOOD, HOSTILE_FAILED),
    }
    wrong: dict[str, Any] = {}
    for job_id in soak.scan_jobs:
        job = jobs.get(job_id)
        if job is None:
            continue
        stored = {
            name: (s.total_items, s.completed_items, s.failed_items)
            for name, s in job.stages.items()
        }
        if stored != expected:
            wrong[job_id] = {"store": stored}
    truth: dict[str, Any] = {}
    if soak.scan_jobs and soak.scan_jobs[-1] in jobs:
        last = jobs[soak.scan_jobs[-1]]
        counted = await app.reconciler.count(last)
        truth = {n: (c.total_items, c.completed_items, c.failed_items) for n, c in counted.items()}
        stored = {
            n: (s.total_items, s.completed_items, s.failed_items) for n, s in last.stages.items()
        }
        if any(stored[name] != value for name, value in truth.items()):
            wrong[last.id] = {"store": stored, "truth": truth}
    scans = {
        "jobs": len(soak.scan_jobs),
        "refused_starts": soak.scan_failures,
        "expected": {name: list(value) for name, value in expected.items()},
        "last_truth": truth,
    }
    checks = [
        _check(
            f"every scan counts {images} images, {HOSTILE_FAILED} failed; the last one"
            " equals its catalog's truth",
            not wrong and bool(soak.scan_jobs),
            wrong or None,
        )
    ]
    return scans, checks


async def _check_clients(soak: Soak, app: App) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Each client's view against the store, once they have had
    :data:`CATCH_UP` seconds to catch up with the last writes."""
    deadline = time.monotonic() + CATCH_UP
    while True:
        try:
            store = {job.id: job.to_dict() for job in await _all_jobs(app)}
        except JobtrackError:
            store = {}
        behind = {
            client.number: sorted(
                job_id for job_id, job in store.items() if client.view.get(job_id) != job
            )
            for client in soak.clients
        }
        behind = {n: ids for n, ids in behind.items() if ids}
        if (store and not behind) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    clients = {
        "count": len(soak.clients),
        "connects": sum(c.connects for c in soak.clients),
        "cuts": sum(c.cuts for c in soak.clients),
        "errors": sum(c.errors for c in soak.clients),
        "events": sum(c.events for c in soak.clients),
    }
    detail = {n: {"jobs": len(ids), "first": ids[:3]} for n, ids in behind.items()}
    checks = [
        _check(
            "each stream client's last view of each job equals the store's",
            bool(store) and not behind,
            detail or None,
        )
    ]
    return clients, checks


def faults_undone(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The check that every fault injected was undone: the service or
    process it took down came back (a fault that was not leaves the run
    without the conditions its checks assume)."""
    stuck = [f"{e['kind']} at {e['at']} s: {e['note']}" for e in entries if not e["recovered"]]
    return _check("every fault injected was undone", not stuck, stuck or None)


def fault_summary(entries: list[dict[str, Any]], *, ok: bool) -> dict[str, dict[str, int]]:
    """Faults by kind: injected, recovered from (the service or process
    back), survived (recovered from, in a run whose every end check
    passed: ``ok``), skipped."""
    summary = {kind: {"injected": 0, "recovered": 0, "survived": 0, "skipped": 0} for kind in KINDS}
    for entry in entries:
        row = summary[entry["kind"]]
        if entry["note"].startswith(("skipped", "not injected")):
            row["skipped"] += 1
            continue
        row["injected"] += 1
        row["recovered"] += int(entry["recovered"])
        row["survived"] += int(entry["recovered"] and ok)
    return summary


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: how it was run, the faults, the figures, the checks."""
    plan = report["plan"]
    items, latency = report["items"], report["latency"]
    verdict = "passed" if report["ok"] else "FAILED"
    cluster = bool(plan.get("node_lost"))
    broker = (
        "a private cluster of three RabbitMQ nodes (quorum queues; every process given"
        " the three nodes' URLs, each starting on another node)"
        if cluster
        else "a private RabbitMQ node"
    )
    lines = [
        f"# Chaos soak: {verdict}",
        "",
        f"Run as `python -m tests.soak.run --minutes {plan['minutes']:g} --seed {plan['seed']}"
        f"{' --cluster' if cluster else ''}`"
        f" (`make soak SOAK_MINUTES={plan['minutes']:g} SOAK_SEED={plan['seed']}"
        f"{' SOAK_CLUSTER=1' if cluster else ''}`), from"
        f" {report['started_at']} to {report['window_end_at']} (faults), then"
        f" {report['quiesced_in_seconds']} s for the last jobs to end.",
        "",
        f"Setup: a private PostgreSQL server (store and truth table) and {broker};"
        f" {plan['jobs']} jobs x {plan['items']} items of a no-op job type produced"
        f" in {plan['waves']} waves over the first {plan['produce_until']:.0%} of the run,"
        " and scans of a hostile"
        " collection (3 images, 2 decompression bombs, an empty file, a symlink out of it)"
        f" every {plan['scan_every']:g} s through `jobtrack scan --no-wait`;"
        f" {plan['workers']} `jobtrack worker` processes of the no-op type and one of the"
        f" scans' renditions, `jobtrack monitor` (stuck after {plan['stuck_after']} s,"
        f" a cycle every {plan['monitor_interval']} s), `jobtrack serve` with"
        f" {plan['clients']} stream clients.",
        "",
        "## Faults",
        "",
        "| fault | injected | recovered | survived | skipped |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, row in report["faults"].items():
        lines.append(
            f"| {kind} | {row['injected']} | {row['recovered']} | {row['survived']} |"
            f" {row['skipped']} |"
        )
    lines += [
        "",
        "`recovered`: the service or process was back afterwards; `survived`: recovered"
        " from, and every end check below passed; `skipped`: a worker kill that found its"
        " worker stopped or down, or `node_lost` on a single-node broker (it needs"
        " `--cluster`).",
        "",
        "## Items",
        "",
        "| | |",
        "|---|---:|",
        f"| items expected | {items['expected']} |",
        f"| items done (distinct keys in the truth table) | {items['done_distinct']} |",
        f"| items done more than once | {items['done_more_than_once']} |",
        f"| most executions of one item | {items['max_executions']} |",
        f"| items lost | {items['lost']} |",
        f"| items counted twice | {items['counted_twice']} |",
        "",
        "## Last item → job completed (seconds)",
        "",
        "| jobs completed | n | p50 | p99 | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("during_faults", "after_faults", "all"):
        row = latency[name]
        lines.append(
            f"| {name.replace('_', ' ')} | {row['jobs']} | {row['p50']} | {row['p99']} |"
            f" {row['max']} |"
        )
    row = latency["job_created_to_completed"]
    lines += [
        "",
        f"A job's whole life, created to completed: p50 {row['p50']} s, p99 {row['p99']} s,"
        f" max {row['max']} s (a wave's jobs share the workers).",
    ]
    clients, scans = report["clients"], report["scans"]
    lines += [
        "",
        f"Scans: {scans['jobs']} jobs; starts refused: {len(scans['refused_starts'])}."
        f" Stream clients: {clients['connects']} connections, {clients['cuts']} cuts,"
        f" {clients['errors']} connections ended by an error, {clients['events']} events.",
        f" The producer tried a call again {report['producer_retries']} times.",
        "",
        "## Checks",
        "",
    ]
    for check in report["checks"]:
        mark = "ok" if check["ok"] else "FAILED"
        lines.append(f"- {mark}: {check['name']}")
        if check["detail"]:
            lines.append(f"  - {str(check['detail'])[:500]}")
    lines += [
        "",
        "## Processes",
        "",
        "| process | starts | exited by itself | tracebacks |",
        "|---|---:|---|---:|",
    ]
    for name, row in report["processes"].items():
        lines.append(
            f"| {name} | {row['starts']} | {row['exited_by_itself'] or '-'} | {row['tracebacks']} |"
        )
    return "\n".join(lines) + "\n"
