"""Benchmark: thumbnails and display copies of a 12 MP photo, three ways.

Usage::

    python bench/imaging.py [--runs 5] [--repetitions 3] [--out bench/results]

Variants, each measured for a 300 px thumbnail and a 1920 px display copy:

pillow-full
    Full-size decode (``load()`` before resizing): the baseline. Orientation,
    resize filter and JPEG settings are the same as ``render``, so the only
    difference is the decode.
pillow-draft
    ``jobtrack.pipeline.imaging.render``: the JPEG decoder scales by 1/2..1/8
    while decoding (draft mode).
pyvips
    ``pyvips.Image.thumbnail`` (shrink-on-load) then ``jpegsave``, with libvips
    limited to one thread and its operation cache off: the conditions of one
    worker process among many. Skipped when pyvips cannot be imported.

Every (variant, size) pair runs in a fresh subprocess, so peak RSS is honest:
the high-water mark after the imports is subtracted from the one at the end
(``VmHWM`` on Linux, ``ru_maxrss`` elsewhere).
Each run times ``--repetitions`` renditions after one warm-up; the report gives
the median, min and max over ``--runs`` runs of the time per rendition.
Renditions are written to tmpfs when available so disk speed does not count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, features
from PIL import __version__ as pillow_version

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIR = ROOT / "src"
SIZES = {"thumbnail": 300, "display": 1920}
VARIANTS = ("pillow-full", "pillow-draft", "pyvips")
QUALITY = 85
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one worker subprocess reports for one variant and one size."""

    variant: str
    operation: str
    max_edge: int
    run_ms: list[float]
    baseline_rss_mib: float
    peak_rss_mib: float
    width: int
    height: int
    size_bytes: int


# -- worker side: runs in a fresh subprocess --------------------------------------


def _peak_rss_bytes() -> int:
    """This process's resident-set high-water mark."""
    # On Linux ru_maxrss survives exec: a child starts with its parent's peak
    # (here, the parent painted the 12 MP source), which would hide the
    # child's own. VmHWM belongs to the new address space only.
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return usage if sys.platform == "darwin" else usage * 1024


def _pillow_full(source: Path, destination: Path, max_edge: int) -> tuple[int, int]:
    with Image.open(source) as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        # As in render: no conversion (and no copy) for what is already RGB.
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        scale = max_edge / max(rgb.size)
        size = (round(rgb.width * scale), round(rgb.height * scale))
        small = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        small.save(destination, "JPEG", quality=QUALITY, optimize=False, progressive=False)
        return small.size


def _pillow_draft(source: Path, destination: Path, max_edge: int) -> tuple[int, int]:
    from jobtrack.pipeline.imaging import render

    rendition = render(source, destination, max_edge=max_edge, quality=QUALITY)
    return rendition.width, rendition.height


def _pyvips(source: Path, destination: Path, max_edge: int) -> tuple[int, int]:
    import pyvips

    image = pyvips.Image.thumbnail(str(source), max_edge)
    image.jpegsave(str(destination), Q=QUALITY, optimize_coding=False, interlace=False)
    return int(image.width), int(image.height)


_RENDERERS: dict[str, Callable[[Path, Path, int], tuple[int, int]]] = {
    "pillow-full": _pillow_full,
    "pillow-draft": _pillow_draft,
    "pyvips": _pyvips,
}


def _import_variant(variant: str) -> None:
    """Import everything a variant needs, so the RSS baseline includes it."""
    if variant == "pillow-draft":
        import jobtrack.pipeline.imaging  # noqa: F401
    elif variant == "pyvips":
        import pyvips

        pyvips.cache_set_max(0)  # repeated thumbnails of one file must not hit a cache


def worker(variant: str, operation: str, source: Path, runs: int, repetitions: int) -> None:
    """Measure one variant at one size and print a Measurement as JSON."""
    _import_variant(variant)
    baseline = _peak_rss_bytes()
    render = _RENDERERS[variant]
    max_edge = SIZES[operation]
    with tempfile.TemporaryDirectory(dir=_scratch_root()) as scratch:
        destination = Path(scratch) / "out.jpg"
        width, height = render(source, destination, max_edge)  # warm-up
        run_ms = []
        for _ in range(runs):
            started = time.perf_counter()
            for _ in range(repetitions):
                render(source, destination, max_edge)
            run_ms.append(round((time.perf_counter() - started) * 1000 / repetitions, 3))
        size_bytes = destination.stat().st_size
    measurement = Measurement(
        variant=variant,
        operation=operation,
        max_edge=max_edge,
        run_ms=run_ms,
        baseline_rss_mib=round(baseline / MIB, 2),
        peak_rss_mib=round((_peak_rss_bytes() - baseline) / MIB, 2),
        width=width,
        height=height,
        size_bytes=size_bytes,
    )
    print(json.dumps(asdict(measurement)))


def _scratch_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


# -- parent side --------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_DIR), env.get("PYTHONPATH")]))
    # One thread: a worker pool already uses every core, one image per worker.
    env["VIPS_CONCURRENCY"] = "1"
    return env


def _pyvips_unavailable() -> str | None:
    """Why pyvips cannot run, or None when it can."""
    probe = subprocess.run(
        [sys.executable, "-c", "import pyvips; pyvips.Image.black(1, 1).avg()"],
        capture_output=True,
        text=True,
        env=_child_env(),
        check=False,
    )
    if probe.returncode == 0:
        return None
    lines = probe.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {probe.returncode}"


def _measure(
    variant: str, operation: str, source: Path, runs: int, repetitions: int
) -> Measurement:
    command = [sys.executable, __file__, "--worker", variant, "--operation", operation]
    command += ["--source", str(source), "--runs", str(runs), "--repetitions", str(repetitions)]
    completed = subprocess.run(
        command, capture_output=True, text=True, env=_child_env(), check=True
    )
    return Measurement(**json.loads(completed.stdout.strip().splitlines()[-1]))


def _make_source(folder: Path) -> Path:
    sys.path.insert(0, str(SOURCE_DIR))
    from jobtrack.pipeline.sample import generate_sample

    # The first picture of every collection is a landscape JPEG at the maximum.
    manifest = generate_sample(folder, count=1, broken=0, max_megapixels=12.0)
    return manifest.images[0]


def _versions() -> dict[str, str]:
    versions = {
        "python": platform.python_version(),
        "pillow": pillow_version,
        "libjpeg-turbo (pillow)": str(features.version_feature("libjpeg_turbo")),
    }
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pyvips; print(pyvips.__version__, "
            "'.'.join(str(pyvips.version(i)) for i in range(3)))",
        ],
        capture_output=True,
        text=True,
        env=_child_env(),
        check=False,
    )
    if probe.returncode == 0:
        versions["pyvips"], versions["libvips"] = probe.stdout.split()
    return versions


def _machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cpus": os.cpu_count(), "system": platform.platform()}


def _summary(measurement: Measurement) -> dict[str, Any]:
    runs = measurement.run_ms
    return {
        **asdict(measurement),
        "median_ms": statistics.median(runs),
        "min_ms": min(runs),
        "max_ms": max(runs),
    }


def _markdown(report: dict[str, Any]) -> str:
    source = report["source"]
    lines = [
        "# Imaging benchmark",
        "",
        f"Source: {source['width']}x{source['height']} JPEG, {source['size_bytes'] / MIB:.1f} MiB."
        f" {report['runs']} runs x {report['repetitions']} renditions; one thread each.",
        f"Machine: {report['machine']['cpu']} ({report['machine']['cpus']} CPUs).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "",
        "| variant | 300 px thumbnail, ms | 1920 px copy, ms | peak RSS thumbnail | "
        "peak RSS 1920 px |",
        "|---|---|---|---|---|",
    ]
    by_key = {(r["variant"], r["operation"]): r for r in report["results"]}
    for variant in VARIANTS:
        thumb = by_key.get((variant, "thumbnail"))
        display = by_key.get((variant, "display"))
        if thumb is None or display is None:
            continue
        lines.append(
            f"| {variant} | {_ms(thumb)} | {_ms(display)} | "
            f"{thumb['peak_rss_mib']:.0f} MiB | {display['peak_rss_mib']:.0f} MiB |"
        )
    lines += [
        "",
        "Times are the median (min-max) per rendition. Peak RSS is the growth of the",
        "high-water mark over the process's size after imports, in a fresh process.",
    ]
    lines += [f"Skipped {s['variant']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def _ms(result: dict[str, Any]) -> str:
    return f"{result['median_ms']:.1f} ({result['min_ms']:.1f}-{result['max_ms']:.1f})"


def main(argv: list[str] | None = None) -> int:
    """Run every variant and write imaging.json and imaging.md."""
    args = _parse(argv)
    if args.worker:
        worker(args.worker, args.operation, Path(args.source), args.runs, args.repetitions)
        return 0
    started = time.perf_counter()
    skipped = []
    variants = list(VARIANTS)
    if (reason := _pyvips_unavailable()) is not None:
        print(f"note: skipping pyvips ({reason})")
        skipped.append({"variant": "pyvips", "reason": reason})
        variants.remove("pyvips")
    with tempfile.TemporaryDirectory() as folder:
        source = _make_source(Path(folder))
        with Image.open(source) as image:
            width, height = image.size
        results = []
        for variant in variants:
            for operation in SIZES:
                measurement = _measure(variant, operation, source, args.runs, args.repetitions)
                results.append(_summary(measurement))
                print(
                    f"{variant:>13} {operation:>9}: {results[-1]['median_ms']:7.1f} ms"
                    f"  peak RSS +{measurement.peak_rss_mib:5.1f} MiB"
                    f"  -> {measurement.width}x{measurement.height}"
                )
        source_bytes = source.stat().st_size
    report = {
        "source": {"width": width, "height": height, "size_bytes": source_bytes},
        "runs": args.runs,
        "repetitions": args.repetitions,
        "quality": QUALITY,
        "versions": _versions(),
        "machine": _machine(),
        "results": results,
        "skipped": skipped,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "imaging.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "imaging.md").write_text(_markdown(report))
    print(f"wrote {out / 'imaging.json'} and {out / 'imaging.md'} in {report['elapsed_s']} s")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--repetitions", type=int, default=3, help="renditions per run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="report folder")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--operation", choices=tuple(SIZES), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
