"""``jobtrack serve``: the HTTP API and the live dashboard."""

from __future__ import annotations

from pathlib import Path

import click

from jobtrack.cli.options import (
    app_for,
    app_option,
    broker_option,
    data_dir_option,
    preflight,
    settings_from,
    store_option,
    usage_error,
)
from jobtrack.errors import InvalidRequest


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind."
)
@click.option(
    "--root",
    "roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder scans may be started under (repeatable) [env JOBTRACK_SCAN_ROOTS].",
)
@app_option
@data_dir_option
@store_option
@broker_option
def serve(
    host: str,
    port: int,
    roots: tuple[Path, ...],
    app_spec: str | None,
    data_dir: Path | None,
    store_url: str | None,
    broker_url: str | None,
) -> None:
    """Serve the HTTP API (/api/…, /metrics, /healthz, OpenAPI at /docs) and
    the live dashboard (/).

    Binds 127.0.0.1 by default. Every mutating call needs the bearer token
    JOBTRACK_API_TOKEN; bound to any other address, every call does, and the
    server refuses to start without one. Scans may only be started under the
    --root folders. The job types are the app's (--app; the built-in
    app's collection scan by default).
    """
    settings = settings_from(data_dir=data_dir, store_url=store_url, broker_url=broker_url)
    app = None if not app_spec else app_for(app_spec, settings)
    preflight(settings)
    try:
        from jobtrack.api import ApiConfig, create_app  # noqa: PLC0415 (an optional extra)
    except ImportError as exc:
        raise click.ClickException(
            f"the HTTP API needs the api extra (pip install 'jobtrack[api]'): {exc}"
        ) from None
    try:
        config = ApiConfig.for_bind(host, roots=roots, stuck_after=settings.stuck_after)
    except InvalidRequest as exc:
        raise usage_error(exc) from None
    import uvicorn  # noqa: PLC0415

    uvicorn.run(create_app(settings, config, app=app), host=host, port=port, log_level="info")
