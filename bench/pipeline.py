"""Benchmark: images/s through thumbnail + cache, with tracking on and off.

Usage::

    python -m bench.pipeline [--images 200] [--runs 3] [--workers 2]

The collection is ``--images`` photo-like 4000x3000 (12 MP) JPEGs, made once
and kept under bench/data/. Each run scans it into a fresh data folder on the
embedded runtime (SQLite, in-process broker, one image process per core) and
times the walk plus every rendition until no message is queued or in flight.
"Off" runs the same pipeline with consumer progress switched off (the
rollback switch); runs alternate on/off so drift on a shared machine hits
both alike. The tracking overhead is 1 - (images/s on) / (images/s off),
taken per pair of neighbouring runs, then the median.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from bench.report import RESULTS, summary, table, write
from jobtrack.model import JobStatus
from jobtrack.runtime import EmbeddedRuntime, Settings

DATA = Path(__file__).resolve().parent / "data"
SIZE = (4000, 3000)
DISTINCT = 8


def photo(seed: int) -> Image.Image:
    """A 12 MP picture with smooth areas, edges and grain, like a photograph."""
    small = Image.linear_gradient("L").resize((400, 300)).convert("RGB")
    draw = ImageDraw.Draw(small)
    for i in range(12):
        x, y = (seed * 37 + i * 53) % 400, (seed * 11 + i * 29) % 300
        colour = ((seed * 40 + i * 20) % 256, (i * 70) % 256, (seed * 90 + i * 15) % 256)
        draw.ellipse((x - 40, y - 30, x + 40, y + 30), fill=colour)
    big = small.filter(ImageFilter.GaussianBlur(3)).resize(SIZE, Image.Resampling.BICUBIC)
    grain = Image.effect_noise(SIZE, 12).convert("RGB")
    return Image.blend(big, grain, 0.08)


def collection(count: int) -> Path:
    """The benchmark collection, made on first use."""
    folder = DATA / f"photos-12mp-{count}"
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = []
    for seed in range(DISTINCT):
        path = folder / f"IMG_{seed:04d}.jpg"
        photo(seed).save(path, quality=90)
        sources.append(path)
    for index in range(DISTINCT, count):
        shutil.copyfile(sources[index % DISTINCT], folder / f"IMG_{index:04d}.jpg")
    return folder


async def one_run(source: Path, data_dir: Path, *, progress: bool, workers: int) -> float:
    """Seconds from the scan's start until every rendition is made."""
    settings = Settings(
        data_dir=data_dir,
        store_url=f"sqlite:///{data_dir / 'jobtrack.db'}",
        consumer_progress=progress,
        workers=workers,
    )
    async with EmbeddedRuntime(settings) as runtime:
        start_time = time.perf_counter()
        start = await runtime.scanner.start(source)
        await runtime.scanner.run(start.job, start.collection)
        await runtime.wait_settled()
        elapsed = time.perf_counter() - start_time
        job = await runtime.store.get_job(start.job.id)
        if progress:
            assert job.status is JobStatus.COMPLETED, job.to_dict()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write bench/results/pipeline.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder")
    args = parser.parse_args(argv)
    source = collection(args.images)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(args.runs):
        for mode in ("on", "off"):
            with tempfile.TemporaryDirectory() as folder:
                seconds = asyncio.run(
                    one_run(source, Path(folder), progress=mode == "on", workers=args.workers)
                )
            rates[mode].append(args.images / seconds)
    overheads = [1 - on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    results = {mode: summary(values) for mode, values in rates.items()}
    rows = [
        [f"tracking {mode}", f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"]
        for mode, r in results.items()
    ]
    overhead = statistics.median(overheads)
    markdown = (
        "# Thumbnail + cache throughput, tracking on and off\n\n"
        f"{args.images} JPEGs of 4000x3000, {args.workers} image processes, "
        f"{args.runs} runs each (alternating). Median (min-max) images/s, each image "
        "getting a 300 px thumbnail and a 1920 px cache copy.\n\n"
        + table(["mode", "images/s"], rows)
        + f"\nTracking overhead (median of paired runs): {overhead * 100:.2f}% "
        f"(per pair: {', '.join(f'{o * 100:.2f}%' for o in overheads)})\n"
    )
    write(
        "pipeline",
        {
            "images": args.images,
            "workers": args.workers,
            "images_per_second": results,
            "overhead": summary(overheads),
        },
        markdown,
        out=args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
