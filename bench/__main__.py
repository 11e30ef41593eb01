"""``python -m bench``: run every benchmark and write bench/results/.

Usage::

    python -m bench [--quick]

``--quick`` runs fewer items and runs, to check that the benchmarks work.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench import broker, increment, monitor, pipeline, progress, stream, stream_load

HERE = Path(__file__).resolve().parent


def main() -> int:
    """Run every benchmark: increment, pipeline, progress, broker, monitor, the two
    stream ones and imaging."""
    parser = argparse.ArgumentParser(description="Run jobtrack's benchmarks.")
    parser.add_argument("--quick", action="store_true", help="fewer items and runs")
    args = parser.parse_args()
    if args.quick:  # a smoke run: its figures go aside, not over the real ones
        out = ["--out", str(HERE / "results" / "quick")]
        increment.main(["--runs", "2", "--items", "2000", *out])
        pipeline.main(["--runs", "1", "--images", "20", *out])
        progress.main(["--runs", "1", "--duration", "0.5", *out])
        broker.main(["--runs", "1", "--items", "2000", *out])
        monitor.main(["--jobs", "6,100", "--window", "2", "--million", "100000", *out])
        stream.main(["--runs", "1", "--seconds", "2", "--clients", "20", *out])
        stream_load.main(["--runs", "1", "--seconds", "2", "--clients", "20", "--slow", "5", *out])
        subprocess.run([sys.executable, str(HERE / "imaging.py"), "--runs", "1", *out], check=True)
        return 0
    increment.main(["--runs", "5"])
    pipeline.main(["--runs", "3"])
    progress.main(["--runs", "3"])
    broker.main(["--runs", "3"])
    monitor.main(["--runs", "3"])
    stream.main(["--runs", "3"])
    stream_load.main(["--runs", "3"])
    subprocess.run([sys.executable, str(HERE / "imaging.py")], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
