"""The server's bind, Host checks and token, over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jobtrack.api import ApiConfig
from jobtrack.errors import InvalidRequest
from tests.api.server import running_server


def _serve(host: str, token: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    env["JOBTRACK_API_TOKEN"] = token
    command = [sys.executable, "-m", "jobtrack", "serve", "--host", host]
    return subprocess.run(
        [*command, "--port", "0", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_token_of_only_whitespace_stops_the_server_from_starting(
    host: str, tmp_path: Path
) -> None:
    done = _serve(host, " \t ", tmp_path)
    assert done.returncode == 2, done.stderr
    assert "JOBTRACK_API_TOKEN is blank" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_blank_token_is_refused_and_a_token_is_taken_without_its_spaces() -> None:
    with pytest.raises(InvalidRequest, match="JOBTRACK_API_TOKEN is blank"):
        ApiConfig.for_bind("127.0.0.1", env={"JOBTRACK_API_TOKEN": "  "})
    with pytest.raises(InvalidRequest, match="JOBTRACK_API_TOKEN is blank"):
        ApiConfig.for_bind("0.0.0.0", token="\n", env={})
    assert ApiConfig.for_bind("127.0.0.1", env={"JOBTRACK_API_TOKEN": " t "}).token == "t"
    assert ApiConfig.for_bind("127.0.0.1", env={"JOBTRACK_API_TOKEN": ""}).token is None


def test_any_loopback_bind_takes_its_own_host_and_refuses_others_as_json(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path, host="127.0.0.2") as server, server.client() as client:
        assert server.url.startswith("http://127.0.0.2:")
        assert client.get("/healthz").json() == {"status": "ok", "store": "ok"}
        port = server.url.rsplit(":", 1)[1]
        for host in (f"localhost:{port}", "127.0.0.1", f"127.0.0.2:{port}", "[::1]:80"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.2.evil.example", "[::1"):
            refused = client.get("/api/jobs", headers={"Host": host})
            assert refused.status_code == 400, host
            assert refused.headers["content-type"] == "application/json"
            assert refused.json() == {"error": "invalid Host header"}


def test_off_loopback_a_trailing_slash_is_not_redirected_to_the_callers_host(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path, host="0.0.0.0") as server:
        answer = httpx.get(f"{server.url}/healthz/", headers={"Host": "evil.example"})
    assert answer.status_code == 404
    assert "location" not in answer.headers
    assert answer.json() == {"error": "Not Found"}
