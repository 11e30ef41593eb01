"""The wheel as a user installs it: built once, installed into clean virtual
environments with the project's pinned versions, then run from there.

One environment has the ``api`` extra (the dashboard served from the files
inside the wheel); the other the core alone, which must start without
Pillow (the ``images`` extra).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


@dataclass(frozen=True)
class Venv:
    """A virtual environment with the wheel installed."""

    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def jobtrack(self) -> Path:
        return self.path / "bin" / "jobtrack"

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a program of the environment, outside the project's folder."""
        return subprocess.run(
            [str(arg) for arg in args],
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
            cwd=self.path,
            env=_clean_environment(),
        )


def _clean_environment() -> dict[str, str]:
    """This process's environment without jobtrack's settings or a virtual env."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("JOBTRACK_") and key not in ("VIRTUAL_ENV", "PYTHONPATH")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built into a wheel (and an sdist), once for the module."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        # The build backend (hatchling) at its pinned version, too.
        env={**_clean_environment(), "PIP_CONSTRAINT": str(CONSTRAINTS)},
    )
    (built,) = out.glob("jobtrack-*.whl")
    assert len(list(out.glob("jobtrack-*.tar.gz"))) == 1
    return built


def _venv(where: Path, wheel: Path, extras: str) -> Venv:
    subprocess.run(
        [sys.executable, "-m", "venv", str(where)], check=True, capture_output=True, timeout=120
    )
    venv = Venv(where)
    requirement = f"jobtrack[{extras}] @ {wheel.as_uri()}" if extras else str(wheel)
    installed = venv.run(
        venv.python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--constraint",
        CONSTRAINTS,
        requirement,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    return venv


@pytest.fixture(scope="module")
def api_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A clean environment with ``jobtrack[api]`` from the wheel."""
    return _venv(tmp_path_factory.mktemp("venv-api") / "venv", wheel, "api")


@pytest.fixture(scope="module")
def core_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A clean environment with the wheel and no extras."""
    return _venv(tmp_path_factory.mktemp("venv-core") / "venv", wheel, "")


def test_wheel_holds_the_dashboard_the_sql_and_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    static = {name for name in names if name.startswith("jobtrack/api/static/")}
    pages = ROOT / "src" / "jobtrack" / "api" / "static"
    assert static == {f"jobtrack/api/static/{path.name}" for path in pages.iterdir()}
    assert "jobtrack/api/static/index.html" in static
    sql = {name for name in names if name.endswith(".sql")}
    in_tree = {path.relative_to(ROOT / "src").as_posix() for path in (ROOT / "src").rglob("*.sql")}
    assert sql == in_tree
    assert "jobtrack/store/sqlite/queries.sql" in sql
    assert "jobtrack/store/postgres/queries.sql" in sql
    assert any(name.startswith("jobtrack/store/sqlite/migrations/0001_") for name in sql)
    assert any(name.startswith("jobtrack/store/postgres/migrations/0001_") for name in sql)
    assert "jobtrack/py.typed" in names


def test_installed_command_starts(api_venv: Venv) -> None:
    shown = api_venv.run(api_venv.jobtrack, "--help")
    for command in ("scan", "worker", "monitor", "serve", "jobs"):
        assert command in shown.stdout
    where = api_venv.run(api_venv.python, "-c", "import jobtrack; print(jobtrack.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(api_venv.path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def served(api_venv: Venv, tmp_path: Path) -> Iterator[str]:
    """``jobtrack serve`` of the installed wheel on a free port; its base URL."""
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                str(api_venv.jobtrack),
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "state"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=_clean_environment(),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # A graceful stop: uvicorn ends by raising the signal it handled again.
    assert process.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()


def test_installed_server_serves_the_dashboard_from_the_wheel(served: str, api_venv: Venv) -> None:
    installed = api_venv.run(
        api_venv.python,
        "-c",
        "from importlib import resources; "
        "print(resources.files('jobtrack.api').joinpath('static'))",
    )
    static = Path(installed.stdout.strip())
    assert static.is_relative_to(api_venv.path)
    page = httpx.get(f"{served}/", timeout=10)
    assert page.status_code == 200
    assert page.text == (static / "index.html").read_text(encoding="utf-8")
    for name in ("dashboard.js", "dashboard.css"):
        answer = httpx.get(f"{served}/static/{name}", timeout=10)
        assert answer.status_code == 200
        assert answer.content == (static / name).read_bytes()
    assert httpx.get(f"{served}/api/jobs", timeout=10).json()["jobs"] == []


def test_core_installs_and_starts_without_pillow(core_venv: Venv) -> None:
    imported = core_venv.run(core_venv.python, "-c", "import jobtrack; print(jobtrack.__version__)")
    assert imported.stdout.strip() == VERSION
    shown = core_venv.run(core_venv.jobtrack, "--help")
    assert "serve" in shown.stdout
    pillow = core_venv.run(core_venv.python, "-c", "import PIL", check=False)
    assert pillow.returncode == 1
    assert "No module named 'PIL'" in pillow.stderr


def test_core_top_runs_without_the_api_extra(core_venv: Venv, tmp_path: Path) -> None:
    fastapi = core_venv.run(core_venv.python, "-c", "import fastapi", check=False)
    assert fastapi.returncode == 1
    missing = tmp_path / "none.db"
    top = core_venv.run(
        core_venv.jobtrack,
        "top",
        "--once",
        "--json",
        "--store",
        f"sqlite:///{missing}",
        check=False,
    )
    assert top.returncode == 1, top.stderr
    assert json.loads(top.stdout)["store_error"] == f"no database at {missing}"


def test_core_sample_says_which_extra_to_install(core_venv: Venv, tmp_path: Path) -> None:
    sample = core_venv.run(core_venv.jobtrack, "sample", tmp_path / "photos", check=False)
    assert sample.returncode == 1
    assert sample.stderr == (
        "Error: the sample collection needs Pillow: pip install 'jobtrack[images]'\n"
    )


def test_core_scan_fails_its_images_saying_which_extra_to_install(
    core_venv: Venv, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not decoded without Pillow")
    scan = core_venv.run(
        core_venv.jobtrack,
        "scan",
        photos,
        "--data-dir",
        tmp_path / "state",
        "--json",
        check=False,
    )
    assert scan.returncode == 1, scan.stderr  # every rendition failed: the job failed
    job = json.loads(scan.stdout)
    assert job["status"] == "failed"
    assert job["failures"] == [
        {
            "image": "a.jpg",
            "stages": ["cache", "thumbnail"],
            "error": "cannot render a.jpg: rendering needs Pillow, which is not installed:"
            " pip install 'jobtrack[images]'",
        }
    ]


def test_core_runs_the_csv_example_on_the_embedded_default(core_venv: Venv, tmp_path: Path) -> None:
    for name in ("csv_import.py", "payments.csv"):  # as a user copies them
        (tmp_path / name).write_bytes((ROOT / "examples" / name).read_bytes())
    done = subprocess.run(
        [str(core_venv.python), "csv_import.py", "payments.csv"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={**_clean_environment(), "JOBTRACK_DATA_DIR": str(tmp_path / "state")},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1:] == [
        f"{lines[1].split(':')[0]}: completed",
        "parse: 12 items, 10 done, 2 failed",
        "write: 10 items, 10 done, 0 failed",
        "failed parse line-6: ValueError: amount 'not-a-number' is not a number",
        "failed parse line-9: ValueError: expected 3 columns, got 2",
        f"10 rows in {tmp_path / 'payments.db'}",
    ]
    assert (tmp_path / "state" / "jobtrack.db").is_file()
