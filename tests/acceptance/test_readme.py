"""The README's Python snippets: the job type of its first screen declares
itself, and the store example runs and prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_first_screen_declares_its_job_type(tmp_path: Path) -> None:
    first = _snippets()[0]
    assert first.startswith("# myjobs.py\n")
    (tmp_path / "myjobs.py").write_text(first, encoding="utf-8")
    check = (
        "import myjobs; t = myjobs.app.get_type('csv-import'); t.check_complete(); "
        "print(t.stages, t.fed_by('write'), t.handlers['write'].executor)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == "('parse', 'write') ('parse',) async\n"


def test_python_snippet_runs(tmp_path: Path) -> None:
    [snippet] = [s for s in _snippets() if "asyncio.run(main())" in s]
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == "completed 3\n"
