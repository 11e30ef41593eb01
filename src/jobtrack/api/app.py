"""The ASGI app: the JSON API, the live stream, metrics and the dashboard.

Every route reads the store the workers and monitors write; the stream polls
its change feed (:mod:`jobtrack.api.feed`). Errors are JSON, never a
traceback; the bearer token is checked before any route runs
(:mod:`jobtrack.api.security`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobtrack.api.config import ApiConfig
from jobtrack.api.feed import ChangeFeed
from jobtrack.api.metrics import (
    OverviewCollector,
    QueueCollector,
    WorkerCollector,
    render_metrics,
)
from jobtrack.api.overview import overview_json, watched_json
from jobtrack.api.scans import ScanLauncher
from jobtrack.api.schemas import (
    ActivityOut,
    CancelOut,
    CancelRefusedOut,
    DeadIdsIn,
    DeadLettersOut,
    DeadSettledOut,
    DeadSettleIn,
    ErrorOut,
    EventsOut,
    FailuresOut,
    HealthOut,
    JobOut,
    JobPage,
    JobStatusFilter,
    OverviewOut,
    QueuesOut,
    RetryOut,
    ScanIn,
    ThroughputOut,
    WatchPage,
    WatchStateName,
    WorkersOut,
)
from jobtrack.api.security import BodyLimit, LoopbackHostGuard, TokenGuard
from jobtrack.api.stream import EventCache, job_events_stream, since_header
from jobtrack.api.workers import throughput_json, throughput_since, workers_json
from jobtrack.errors import (
    BrokerUnavailable,
    Conflict,
    InvalidRequest,
    JobtrackError,
    NotFound,
    PartlySettled,
    PathRefused,
    ScanNotStarted,
    StoreError,
    StoreMissing,
    TooManyDeadLetters,
)
from jobtrack.jobs.types import failure_json, item_failures_of, search_fields
from jobtrack.model import Clock, JobStatus, utc_now
from jobtrack.runtime import App, Settings, cancel_job
from jobtrack.runtime.builtin import builtin_app
from jobtrack.runtime.queues import (
    DeadLetterView,
    QueueRow,
    app_queue,
    drop_dead,
    list_dead,
    queue_rows,
    requeue_dead,
)
from jobtrack.store import JobQuery, JobStore, WatchQuery, WatchState
from jobtrack.store.overview import WATCH_LIMIT
from jobtrack.tracking.stats import WRITE_STATS

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

#: At most this many jobs in a page.
MAX_PAGE = 200
#: At most this many failed items (item and stage) read for a job.
MAX_FAILURES = 10_000

_NO_NUL = "^[^\x00]*$"
_JobTypeParam = Annotated[str | None, Query(max_length=200, pattern=_NO_NUL)]
_TypeParam = Annotated[str | None, Query(alias="type", max_length=200, pattern=_NO_NUL)]

_ERROR_TEXT = {
    400: "bad input",
    401: "no or a wrong bearer token",
    403: "not allowed: outside the scan roots, or the server takes no changes",
    404: "no such job, folder, queue or dead letter",
    409: "not now: the job is running, there is nothing to do, or too many dead letters",
    422: "malformed request",
    503: "the store or broker is unreachable, or the server cannot start a scan now",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers an operation can give, for the OpenAPI document."""
    return {code: {"model": ErrorOut, "description": _ERROR_TEXT[code]} for code in codes}


@dataclass
class _Parts:
    store: JobStore
    app: App
    feed: ChangeFeed
    launcher: ScanLauncher
    config: ApiConfig
    clock: Clock
    events: EventCache


router = APIRouter()


def parts(request: Request) -> _Parts:
    """What the app opened at start."""
    found: _Parts = request.app.state.parts
    return found


def _status_of(exc: JobtrackError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, PathRefused):
        return 403
    if isinstance(exc, TooManyDeadLetters):
        return 409
    if isinstance(exc, InvalidRequest | Conflict):
        return 400 if isinstance(exc, InvalidRequest) else 409
    if isinstance(exc, StoreError | ScanNotStarted | BrokerUnavailable):
        return 503
    return 500


def create_app(
    settings: Settings, config: ApiConfig, *, clock: Clock = utc_now, app: App | None = None
) -> FastAPI:
    """The API of a store (and broker) from ``settings``, with ``config``'s
    roots and token, serving the job types of ``app`` (an unopened App with
    these settings; None: the built-in app, whose collection scans are
    retried by the server's own scans)."""

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        launcher = ScanLauncher(settings, config.roots)
        chosen = builtin_app(settings, scans=launcher.start) if app is None else app
        async with chosen as opened:
            if app is None and not opened.shared_broker:
                # The scans' work runs on the server's in-process broker, so
                # that its queues and dead letters are the ones shown here.
                launcher.broker = opened.broker
            store = opened.store
            # The catalog beside the store is made now, at start (its tables
            # migrated), not by a first scan while another process writes.
            _ = opened.catalog
            feed = ChangeFeed(store, interval=config.feed_interval)
            stop = asyncio.Event()
            polling: asyncio.Task[None] | None = None
            try:
                await feed.start()
                polling = asyncio.create_task(feed.run(stop), name="change feed")
                events = EventCache(store, feed, clock=clock)
                api.state.parts = _Parts(store, opened, feed, launcher, config, clock, events)
                yield
            finally:
                stop.set()
                if polling is not None:
                    await polling
                await launcher.aclose()

    server = FastAPI(
        title="jobtrack",
        summary="Progress of multi-stage background jobs, true under crashes and redelivery.",
        version="0.1.0",
        lifespan=lifespan,
        # No redirect to the path with or without a slash: its Location
        # would be built from the caller's Host header.
        redirect_slashes=False,
        # FastAPI's pages load Swagger UI and ReDoc from a CDN: /docs is ours.
        docs_url=None,
        redoc_url=None,
    )
    server.add_middleware(BodyLimit)
    server.add_middleware(TokenGuard, token=config.token, reads_need_token=config.reads_need_token)
    if config.loopback_hosts_only:  # a loopback bind: no other Host (DNS rebinding)
        server.add_middleware(LoopbackHostGuard)

    _handle_errors(server)
    server.include_router(router)
    _document_security(server, config)
    static = resources.files("jobtrack.api").joinpath("static")
    swagger = resources.files("fastapi_offline").joinpath("static")
    server.mount("/static/swagger", StaticFiles(directory=str(swagger)), name="swagger")
    server.mount("/static", StaticFiles(directory=str(static)), name="static")
    return server


def _document_security(app: FastAPI, config: ApiConfig) -> None:
    """Say in the OpenAPI document which calls need the bearer token, as
    this server checks it: mutating calls always; reads when it serves other
    machines; /healthz never."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        components = document.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the server's JOBTRACK_API_TOKEN",
        }
        for path, operations in document.get("paths", {}).items():
            for method, operation in operations.items():
                if path == "/healthz":
                    operation["security"] = []
                elif method != "get" or config.reads_need_token:
                    operation["security"] = [{"bearer": []}]
                else:
                    operation["security"] = [{}, {"bearer": []}]  # optional
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _handle_errors(app: FastAPI) -> None:
    """Every error as JSON, never a traceback."""

    @app.exception_handler(JobtrackError)
    async def jobtrack_error(request: Request, exc: JobtrackError) -> JSONResponse:
        status = 503 if isinstance(exc, StoreMissing) else _status_of(exc)
        if status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg"))}
            for error in exc.errors()
        ]
        return JSONResponse({"error": "malformed request", "detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": "internal error; the server log has the details"}, 500)


@router.get("/healthz", response_model=HealthOut, tags=["server"], responses=_errors(503))
async def healthz(request: Request) -> dict[str, str]:
    """The server answers and its store is reachable (503 otherwise)."""
    await parts(request).store.list_jobs(JobQuery(limit=1))
    return {"status": "ok", "store": "ok"}


@router.get("/api/jobs", response_model=JobPage, tags=["jobs"], responses=_errors(401, 422, 503))
async def list_jobs(
    request: Request,
    *,
    status: JobStatusFilter | None = None,
    job_type: _JobTypeParam = None,
    type_: _TypeParam = None,
    q: Annotated[str | None, Query(min_length=1, max_length=200, pattern=_NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    """Jobs, newest first, filtered by status (``active``: pending or in
    progress) and type (``job_type``, or ``type``), a page at a time. With
    ``q``, only the jobs whose id starts with it, or in one of whose
    searchable fields (those its type declares, such as a collection scan's
    ``collection.path``) it is found, case-insensitively."""
    found = parts(request)
    query = JobQuery(
        status=None if status in {None, "active"} else JobStatus(status),
        active=status == "active",
        job_type=_one_type(job_type, type_),
        limit=limit + 1,
        offset=offset,
        search=q,
        search_fields=search_fields(found.app.job_types.values()) if q else (),
    )
    jobs = await found.store.list_jobs(query)
    more = len(jobs) > limit
    return {
        "jobs": [job.to_dict() for job in jobs[:limit]],
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if more else None,
    }


@router.get(
    "/api/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=_errors(401, 404, 503)
)
async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    """One job, as in the JSON contract."""
    return (await parts(request).store.get_job(job_id)).to_dict()


@router.get(
    "/api/jobs/{job_id}/events",
    response_model=EventsOut,
    tags=["jobs"],
    responses=_errors(401, 404, 422, 503),
)
async def job_events(
    request: Request, job_id: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """The job's history: reconciled, re-driven, failed, cancelled…"""
    store = parts(request).store
    await store.get_job(job_id)  # 404 for an unknown job
    events = await store.list_events(job_id, limit=limit)
    return {"job_id": job_id, "events": [event.to_dict() for event in events]}


@router.get(
    "/api/events", response_model=ActivityOut, tags=["jobs"], responses=_errors(401, 422, 503)
)
async def activity(
    request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    """The latest events of every job, newest first: what the monitor did
    (reconciled, redriven, failed) and what users did (cancelled, retried)."""
    events = await parts(request).store.recent_events(limit=limit)
    return {"events": [{**event.to_dict(), "job_id": event.job_id} for event in events]}


@router.get(
    "/api/jobs/{job_id}/failures",
    response_model=FailuresOut,
    tags=["jobs"],
    responses=_errors(401, 404, 503),
)
async def failures(request: Request, job_id: str) -> dict[str, Any]:
    """The job's failed items and their errors."""
    found = parts(request)
    job = await found.store.get_job(job_id)
    items = await item_failures_of(found.app, job, limit=MAX_FAILURES)
    return {"job_id": job_id, "failures": failure_json(items)}


@router.post(
    "/api/scans",
    response_model=JobOut,
    status_code=202,
    tags=["jobs"],
    responses=_errors(401, 403, 404, 422, 503),
)
async def start_scan(request: Request, scan: ScanIn) -> dict[str, Any]:
    """Scan a folder under one of the server's roots; answers with the
    job as soon as it exists (or the collection's running job)."""
    job = await parts(request).launcher.start(scan.path)
    return job.to_dict()


@router.post(
    "/api/jobs/{job_id}/cancel",
    response_model=CancelOut,
    tags=["jobs"],
    responses={
        **_errors(401, 403, 404, 503),
        409: {
            "model": CancelRefusedOut,
            "description": "not cancelled: the job had already ended (outcome `ended`, with"
            " `ended_as`: completed, failed or cancelled)",
        },
    },
)
async def cancel(request: Request, job_id: str) -> Any:
    """Cancel the job: its scan stops walking, workers ack its queued items
    without work, and the monitor leaves it alone; one ``cancelled`` event
    is recorded. A job being written all the time is cancelled all the same.
    409 when it had already ended (left as it was)."""
    result = await cancel_job(
        parts(request).store, job_id, message="cancelled through the API", source="api"
    )
    if result.cancelled:
        return result.to_dict()
    body = {"error": result.describe(), **result.to_dict()}
    return JSONResponse(body, status_code=409)


@router.post(
    "/api/jobs/{job_id}/retry",
    response_model=RetryOut,
    status_code=202,
    tags=["jobs"],
    responses=_errors(401, 403, 404, 409, 503),
)
async def retry(request: Request, job_id: str) -> dict[str, Any]:
    """Re-drive the failed items of a job that has ended, as its type
    retries: a collection scan by a new scan of its collection, which redoes
    only what failed or is missing (what was made and is unchanged counts at
    once); a job of any other registered type by a new job of its failed
    items, from its ledger. 409 while the job runs, when it completed with
    nothing failed, was cancelled (a ledger retry), or its type is not one
    the server's app registers."""
    found = parts(request)
    again, failed = await found.app.retry(job_id, limit=MAX_FAILURES)
    return {"retried_from": job_id, "failed_items": failed, "job": again.to_dict()}


@router.get(
    "/api/stream",
    tags=["stream"],
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the changes"}},
)
async def stream(request: Request) -> EventSourceResponse:
    """Server-sent events: first a ``snapshot`` (the active jobs and those
    written in the last minute; after a reconnect with ``Last-Event-ID``,
    every job written since), then a ``job`` event for every change, within
    a poll of the store (0.2 s)."""
    found = parts(request)
    since = since_header(request.headers.get("last-event-id"))
    events = job_events_stream(found.feed, found.events, since)
    return EventSourceResponse(events, ping=0, send_timeout=30)  # (the stream's own keep-alive)


@router.get(
    "/metrics",
    tags=["server"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: items per stage, jobs per status, stuck jobs,
    the monitor's events, workers per state and their items, this
    process's progress writes and latency."""
    found = parts(request)
    threshold = found.clock() - timedelta(seconds=found.config.stuck_after)
    stats = await found.store.stats(stuck_before=threshold)
    counts = await found.store.count_by_type(stuck_before=threshold)
    workers = await found.store.list_workers()
    return Response(
        render_metrics(
            stats,
            WRITE_STATS,
            OverviewCollector(counts),
            QueueCollector(await _queue_rows_or_none(found)),
            WorkerCollector(workers),
        ),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


# Queues and dead letters (runtime.queues does the work, as for the CLI)

#: At most this many dead letters listed at once.
MAX_DEAD = 1000


async def _queue_rows_or_none(found: _Parts) -> list[QueueRow]:
    """The queues' numbers for the metrics; none while the broker is away
    (the other metrics are still served)."""
    try:
        return await queue_rows(found.app)
    except BrokerUnavailable as exc:
        logger.warning("queue metrics left out: %s", exc, extra={"action": "queue_metrics_lost"})
        return []


def _by(request: Request) -> str:
    """Who acts through the API, for the jobs' events."""
    client = request.client.host if request.client is not None else "an unknown client"
    return f"the API (from {client})"


@router.get("/api/queues", response_model=QueuesOut, tags=["queues"], responses=_errors(401, 503))
async def list_queues(request: Request) -> dict[str, Any]:
    """Every stage queue of the server's app: messages ready, consumers,
    messages in flight and the oldest message's age where the broker tells,
    and how many dead letters its dead-letter queue holds."""
    found = parts(request)
    rows = await queue_rows(found.app)
    return {
        "broker": "shared" if found.app.shared_broker else "memory",
        "queues": [row.to_dict() for row in rows],
    }


@router.get(
    "/api/queues/{queue}/dead",
    response_model=DeadLettersOut,
    tags=["queues"],
    responses=_errors(401, 404, 409, 422, 503),
)
async def dead_letters(
    request: Request, queue: str, limit: Annotated[int, Query(ge=1, le=MAX_DEAD)] = 100
) -> dict[str, Any]:
    """The first ``limit`` dead letters of a stage queue, oldest first,
    each with its id, reason, delivery count, when it died and the job,
    stage and item it was for. Listing changes nothing: every dead letter
    stays, in its order, and the count with it (so it is a GET, open
    when reads are). A queue holding more than 10,000 is a 409."""
    app = parts(request).app
    chosen = app_queue(app, queue)
    views = await list_dead(app, queue, limit=limit)
    total = (await app.broker.queue_stats(chosen.dead_queue)).messages
    return {
        "queue": chosen.queue,
        "dead_queue": chosen.dead_queue,
        "total": total,
        "dead_letters": [view.to_dict() for view in views],
    }


async def _settle(request: Request, queue: str, chosen: DeadSettleIn, *, requeue: bool) -> Any:
    app = parts(request).app
    action = requeue_dead if requeue else drop_dead
    ids = list(dict.fromkeys(chosen.ids)) if isinstance(chosen, DeadIdsIn) else None
    answer: dict[str, Any] = {"queue": queue, "action": "requeued" if requeue else "dropped"}
    try:
        views = await action(app, queue, ids, by=_by(request))
    except PartlySettled as exc:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        done = [view.to_dict() for view in exc.taken if isinstance(view, DeadLetterView)]
        answer |= {"error": str(exc), "dead_letters": done, "not_done": exc.not_taken}
        return JSONResponse(answer, status_code=503)
    remaining = (await app.broker.queue_stats(app_queue(app, queue).dead_queue)).messages
    return answer | {"dead_letters": [view.to_dict() for view in views], "remaining": remaining}


@router.post(
    "/api/queues/{queue}/dead/requeue",
    response_model=DeadSettledOut,
    tags=["queues"],
    responses=_errors(401, 403, 404, 409, 422, 503),
)
async def requeue_dead_letters(request: Request, queue: str, chosen: DeadSettleIn) -> Any:
    """Send the chosen dead letters back to their queue (each published
    again, confirmed, before its dead copy goes) and record a ``requeued``
    event on each one's job. An id not found is a 404 naming it, and
    nothing is sent back; an id another server's listing holds for a
    moment is waited for. ``{"all": true}`` sends back at most 1,000 (the
    answer's ``remaining`` says how many are left). A broker lost part way
    answers 503 with the ones sent back (``dead_letters``, their events
    recorded) and the ids not sent back (``not_done``)."""
    return await _settle(request, queue, chosen, requeue=True)


@router.post(
    "/api/queues/{queue}/dead/drop",
    response_model=DeadSettledOut,
    tags=["queues"],
    responses=_errors(401, 403, 404, 409, 422, 503),
)
async def drop_dead_letters(request: Request, queue: str, chosen: DeadSettleIn) -> Any:
    """Drop the chosen dead letters and record a ``dropped`` event on each
    one's job. An id not found is a 404 naming it, and nothing is dropped.
    ``{"all": true}`` drops at most 1,000 (``remaining``: how many are
    left). A broker lost part way answers 503 with the ones dropped and the
    ids not dropped (``not_done``)."""
    return await _settle(request, queue, chosen, requeue=False)


# The operator's overview: counts per job type, the watch list.


def _one_type(job_type: str | None, type_: str | None) -> str | None:
    """The type filter, named ``job_type`` or ``type`` (both: both must hold,
    and when they differ no job does: ``_NO_TYPE``, which no job type is)."""
    if job_type is not None and type_ is not None and job_type != type_:
        return _NO_TYPE
    return job_type if job_type is not None else type_


#: A job type no job has (job type names are never empty).
_NO_TYPE = ""


@router.get(
    "/api/overview", response_model=OverviewOut, tags=["overview"], responses=_errors(401, 503)
)
async def overview(request: Request) -> dict[str, Any]:
    """Per job type and in total: jobs per status, the active ones, and of
    those the stuck (not written for the server's ``stuck_after``), the
    waiting (left alone by the monitor behind a backlog being consumed) and
    the re-driven; read in one query."""
    found = parts(request)
    threshold = found.clock() - timedelta(seconds=found.config.stuck_after)
    counts = await found.store.count_by_type(stuck_before=threshold)
    return overview_json(counts, found.config.stuck_after)


@router.get(
    "/api/watch",
    response_model=WatchPage,
    tags=["overview"],
    responses=_errors(401, 422, 503),
)
async def watch(
    request: Request,
    *,
    state: WatchStateName | None = None,
    job_type: _JobTypeParam = None,
    type_: _TypeParam = None,
    limit: Annotated[int, Query(ge=1, le=WATCH_LIMIT - 1)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    """The active jobs that are stuck, waiting behind a backlog or being
    re-driven by the monitor (``state``: only those), newest first, each
    with why and the monitor's last action; a page at a time."""
    found = parts(request)
    now = found.clock()
    stuck_after = found.config.stuck_after
    query = WatchQuery(
        stuck_before=now - timedelta(seconds=stuck_after),
        state=None if state is None else WatchState(state),
        job_type=_one_type(job_type, type_),
        limit=limit + 1,
        offset=offset,
    )
    listed = await found.store.list_watched(query)
    more = len(listed) > limit
    return {
        "jobs": [watched_json(w, now=now, stuck_after=stuck_after) for w in listed[:limit]],
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if more else None,
        "stuck_after": stuck_after,
    }


# Workers and throughput: the heartbeats the worker processes write.


@router.get(
    "/api/workers", response_model=WorkersOut, tags=["workers"], responses=_errors(401, 503)
)
async def workers(request: Request) -> dict[str, Any]:
    """Every worker process that wrote a heartbeat in the last day, live
    first: its host, pid, stages, concurrency, items and last error, and its
    state (live; dead, since its last beat; stopped)."""
    found = parts(request)
    listed = await found.store.list_workers()
    return workers_json(listed, found.app.settings.heartbeat_interval)


@router.get(
    "/api/throughput",
    response_model=ThroughputOut,
    tags=["workers"],
    responses=_errors(401, 422, 503),
)
async def throughput(
    request: Request, minutes: Annotated[int, Query(ge=1, le=1440)] = 60
) -> dict[str, Any]:
    """Items done and failed per job type and stage, summed over the
    workers, per bucket over the last ``minutes``, with the totals of the
    last minute and the last hour."""
    found = parts(request)
    now = found.clock()
    points = await found.store.throughput(since=throughput_since(now, minutes))
    return throughput_json(points, now, minutes)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return _page("index.html", "default-src 'self'")


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
async def docs() -> HTMLResponse:
    # Swagger UI's stylesheet draws its icons as data: images, and its
    # components set inline styles.
    return _page(
        "docs.html", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"
    )


def _page(name: str, sources: str) -> HTMLResponse:
    """One of the static HTML pages, which no other site may frame."""
    page = resources.files("jobtrack.api").joinpath("static", name)
    return HTMLResponse(
        page.read_text(encoding="utf-8"),
        headers={
            "Content-Security-Policy": f"{sources}; object-src 'none'; base-uri 'none';"
            " frame-ancestors 'none'",
            "X-Frame-Options": "DENY",  # for browsers without frame-ancestors
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
