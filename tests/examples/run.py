"""Running the examples as a user does: ``python examples/NAME.py …`` in a
subprocess, and reading the counts they print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

_STAGE = re.compile(r"^(\w+): (\d+) items, (\d+) done, (\d+) failed$", re.MULTILINE)
_FAILED = re.compile(r"^failed (\w+) (\S+): (.*)$", re.MULTILINE)


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without jobtrack's settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    return env | settings


def run_example(
    name: str, *args: str | Path, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python examples/<name>.py args…`` from the project's folder."""
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env),
        cwd=ROOT,
        check=False,
    )


def stage_counts(output: str) -> dict[str, tuple[int, int, int]]:
    """Each stage's (total, done, failed) as the example printed them."""
    return {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in _STAGE.finditer(output)}


def failures(output: str) -> list[tuple[str, str, str]]:
    """The failed items as the example printed them: (stage, key, error)."""
    return [(m[1], m[2], m[3]) for m in _FAILED.finditer(output)]
