"""Crawl a website (one host) and keep its pages as files, as a three-stage job.

    python examples/crawler.py http://127.0.0.1:8000/ --output pages/

``fetch`` downloads a page (a page that answers with an error, such as a
404, fails its item); ``links`` reads the page's links, keeping those on
the same host, and hands the page on; ``store`` writes its body under the
output folder. This process is the crawl's frontier: it adds the start URL
to ``fetch``, then every link a stored page names that it has not added
yet, until nothing is left to fetch. A page is fetched once, however many
pages link to it (its URL is its key: the job's ledger holds a key once
per stage), and the ``links`` and ``store`` stages grow as pages are found.

On the embedded default (a SQLite store under the data folder, the
in-process broker) the handlers run in this process. With a shared broker
(``JOBTRACK_BROKER_URL=amqp://…``) pass ``--no-work``: this process only
produces and follows the job, and a worker does the work::

    jobtrack worker --app examples.crawler:app

It ends printing each stage's counts and the failed pages; it exits 0 when
the crawl completed (failed pages included), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.request
from contextlib import nullcontext
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

from rich.console import Console

import jobtrack
from jobtrack.cli.progress import JobProgress

app = jobtrack.App()
crawl = app.job_type("crawl", ["fetch", "links", "store"])

#: Seconds a page's download may take.
TIMEOUT = 10.0


class _Links(HTMLParser):
    """The ``href`` of every ``<a>`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.found.extend(value for name, value in attrs if name == "href" and value)


@crawl.handler("fetch", feeds=["links"])
def fetch(item: jobtrack.Item) -> None:
    """Download the page (an HTTP error raises: the page fails)."""
    with urllib.request.urlopen(item.key, timeout=TIMEOUT) as response:
        body = response.read().decode("utf-8", errors="replace")
    item.add("links", key=item.key, payload={"body": body})


@crawl.handler("links", feeds=["store"])
def links(item: jobtrack.Item) -> None:
    """Read the page's links on the same host, and hand the page on."""
    parser = _Links()
    parser.feed(item.payload["body"])
    host = urlsplit(item.key).netloc
    found = set()
    for href in parser.found:
        url = urldefrag(urljoin(item.key, href)).url
        if urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc == host:
            found.add(url)
    item.add("store", key=item.key, payload={"body": item.payload["body"], "links": sorted(found)})


@crawl.handler("store")
def store(item: jobtrack.Item) -> None:
    """Write the page's body under the output folder (``/`` as index.html)."""
    folder = Path(item.job.attributes["output"])
    path = urlsplit(item.key).path.lstrip("/")
    if not path or path.endswith("/"):
        path += "index.html"
    target = (folder / path).resolve()
    if not target.is_relative_to(folder):
        raise ValueError(f"{item.key} would be written outside {folder}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(item.payload["body"], encoding="utf-8")


async def frontier(producer: jobtrack.JobProducer, start: str, progress: JobProgress) -> None:
    """Add the start URL, then every new link of the stored pages, until
    every page is done and no stored page names a page not added yet."""
    job_id = producer.job.id
    added = {start}
    await producer.add("fetch", [start])
    while True:
        job = await app.store.get_job(job_id)
        progress.update(job)
        fetched, read = job.stage("fetch"), job.stage("links")
        quiet = fetched.done_items == fetched.total_items and read.done_items == read.total_items
        # A page counts in `links` only once its `store` item is in the ledger,
        # so when both stages are quiet every link found so far is readable here.
        stored = await app.store.ledger_items(job_id, "store", added)
        new = {url for page in stored for url in page.payload["links"]} - added
        if new:
            added |= new
            await producer.add("fetch", sorted(new))
        elif quiet:
            return
        else:
            await asyncio.sleep(0.1)


async def follow(job_id: str, progress: JobProgress) -> jobtrack.Job:
    """Draw the job's stages until it ends; the job as it ended."""
    while not (job := await app.store.get_job(job_id)).status.terminal:
        progress.update(job)
        await asyncio.sleep(0.2)
    progress.update(job)
    return job


async def report(job: jobtrack.Job) -> None:
    """Print each stage's counts and the failed items."""
    print(f"job {job.id}: {job.status.value}")
    for name, stage in job.stages.items():
        print(
            f"{name}: {stage.total_items} items, {stage.completed_items} done,"
            f" {stage.failed_items} failed"
        )
    for failure in await app.store.list_failures(job.id, limit=1000):
        print(f"failed {failure.stage} {failure.key}: {failure.error}")


async def main(start: str, output: Path, *, work: bool, concurrency: int) -> int:
    """Crawl from ``start`` into ``output``; the exit status."""
    attributes = {"start": start, "output": str(output)}
    async with app:
        if not work and not app.shared_broker:
            raise SystemExit("--no-work needs a shared broker (JOBTRACK_BROKER_URL=amqp://…)")
        async with app.working(concurrency=concurrency) if work else nullcontext():
            with JobProgress(Console(stderr=True)) as progress:
                async with app.start_job(crawl, attributes=attributes) as producer:
                    print(f"job {producer.job.id}: crawling {start}", flush=True)
                    await frontier(producer, start, progress)
                job = await follow(producer.job.id, progress)
        await report(job)
    return 0 if job.status is jobtrack.JobStatus.COMPLETED else 1


def cli() -> None:
    """Parse the command line and run the crawl."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("url", help="where the crawl starts (http:// or https://)")
    parser.add_argument("--output", type=Path, default=Path("pages"), help="the pages' folder")
    parser.add_argument(
        "--no-work", action="store_true", help="only produce and follow (a worker works)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="handler threads")
    args = parser.parse_args()
    if urlsplit(args.url).scheme not in ("http", "https"):
        parser.error("the URL must start with http:// or https://")
    start = urldefrag(args.url).url
    output = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    status = asyncio.run(main(start, output, work=not args.no_work, concurrency=args.concurrency))
    files = sum(1 for path in output.rglob("*") if path.is_file())
    print(f"{files} files in {output}")
    sys.exit(status)


if __name__ == "__main__":
    cli()
