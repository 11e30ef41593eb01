"""The integrations benchmark's report, on fake numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bench.integrations import Run, _kept, _rounds, _Stall, chart, markdown, targets


def _run(
    rate: float,
    *,
    read_us: float | None = None,
    read_cpu_us: float | None = None,
    delay_ms: float = 50.0,
) -> dict[str, Any]:
    run: dict[str, Any] = {"items_per_second": rate, "delay_ms": delay_ms, "load": [1.0, 1.5]}
    if read_us is not None:
        run |= {"read_us": read_us, "reads": 10}
    if read_cpu_us is not None:
        run |= {"read_cpu_us": read_cpu_us}
    return run


def _data() -> dict[str, Any]:
    return {
        "tasks": [100, 500],
        "kill_tasks": 50,
        "runs_per_config": 1,
        "workers": "2 worker processes each",
        "runs": {
            "celery-bare": {"100": _run(1000.0), "500": _run(1000.0)},
            "celery-jobtrack": {
                "100": _run(950.0),
                "500": _run(800.0, read_us=900.0, read_cpu_us=310.0, delay_ms=120.0),
            },
            "celery-chord": {"100": _run(500.0), "500": _run(400.0, read_us=5000.0)},
            "rq-bare": {"100": _run(100.0)},
            "rq-jobtrack": {"100": _run(95.0, read_us=1500.0, delay_ms=250.0)},
        },
        "kills": {
            "celery-jobtrack": {"items": 50, "counted": 50, "probe": 52, "exact": True},
            "rq-jobtrack": {"items": 50, "counted": 49, "probe": 50, "exact": False},
        },
    }


def test_targets_take_the_lowest_ratio_and_the_largest_n_of_each_configuration() -> None:
    met = targets(_data())
    assert met["celery-bare"]["ratio"] is None
    assert met["celery-bare"]["delay_ms"] is None
    assert met["celery-jobtrack"]["ratio"] == 0.8
    assert met["celery-jobtrack"]["within_10pct"] is False
    assert met["celery-jobtrack"]["largest"] == 500
    assert met["celery-jobtrack"]["read_under_1ms"] is True
    assert met["celery-jobtrack"]["read_cpu_us"] == 310.0
    assert met["rq-jobtrack"]["read_cpu_us"] is None
    assert met["celery-jobtrack"]["delay_under_200ms"] is True
    assert met["celery-jobtrack"]["kill_exact"] is True
    assert met["celery-chord"]["read_under_1ms"] is False
    assert met["celery-chord"]["kill"] is None
    assert met["rq-jobtrack"]["ratio"] == 0.95
    assert met["rq-jobtrack"]["within_10pct"] is True
    assert met["rq-jobtrack"]["largest"] == 100
    assert met["rq-jobtrack"]["read_under_1ms"] is False
    assert met["rq-jobtrack"]["delay_under_200ms"] is False
    assert met["rq-jobtrack"]["kill_exact"] is False


def test_markdown_has_a_row_per_configuration_with_its_figures() -> None:
    text = markdown(_data())
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1] == "| celery-bare | 1,000 | 1,000 | - | - |"
    assert rows[2] == "| celery-jobtrack | 950 | 800 | 0.800 | no |"
    assert rows[4] == "| rq-bare | 100 | - | - | - |"
    assert rows[5] == "| rq-jobtrack | 95 | - | 0.950 | yes |"
    assert (
        rows[8]
        == "| celery-jobtrack | 500 | 900 (10) | 310 | yes | 120.0 | yes | 50/50 | 52 | - | yes |"
    )
    # Reads recorded before their CPU was: "-" in its column.
    assert (
        rows[11] == "| rq-jobtrack | 100 | 1,500 (10) | - | no | 250.0 | no | 49/50 | 50 | - | no |"
    )
    assert text.endswith("Load average (1 min) at the runs' start: 1.00 to 1.00.\n")


def test_chart_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "chart" / "integrations.png"
    chart(_data(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_ratio_is_the_median_of_the_rounds_pairs_from_one_invocation() -> None:
    data = _data()
    runs = data["runs"]
    # Round 2's machine was slower for both: the pairs are 0.9, 0.95, 0.8.
    runs["celery-bare"]["100"] |= {
        "rounds_items_per_second": [1000.0, 600.0, 1000.0],
        "invocation": "a",
    }
    runs["celery-jobtrack"]["100"] |= {
        "rounds_items_per_second": [900.0, 570.0, 800.0],
        "invocation": "a",
    }
    runs["celery-bare"]["500"] |= {"rounds_items_per_second": [1000.0], "invocation": "a"}
    runs["celery-jobtrack"]["500"] |= {"rounds_items_per_second": [920.0], "invocation": "b"}
    met = targets(data)
    # N=100: median of the pairs (0.9); N=500, another invocation: 800 / 1000.
    assert met["celery-jobtrack"]["ratio"] == 0.8
    runs["celery-jobtrack"]["500"]["invocation"] = "a"
    assert targets(data)["celery-jobtrack"]["ratio"] == pytest.approx(0.9)
    text = markdown(data)
    assert "- celery-jobtrack, N=100: 0.90, 0.95, 0.80 (median 0.900)" in text
    assert "- celery-jobtrack, N=500: 0.92 (median 0.920)" in text
    assert "celery-chord, N=" not in text  # no rounds recorded


def test_rounds_are_one_count_for_every_n_or_one_per_n() -> None:
    assert _rounds("3", [10_000, 50_000]) == {10_000: 3, 50_000: 3}
    assert _rounds("5,1", [10_000, 50_000]) == {10_000: 5, 50_000: 1}
    with pytest.raises(ValueError, match="one per N"):
        _rounds("5,1,2", [10_000, 50_000])
    with pytest.raises(ValueError, match="at least 1"):
        _rounds("0", [10_000])


def test_keep_replaces_only_the_configurations_and_n_run_again() -> None:
    before = _data() | {"runs_per_config": {"100": 3, "500": 1}}
    again = {
        "tasks": [500],
        "kill_tasks": 0,
        "runs_per_config": {"500": 3},
        "workers": "2 worker processes each",
        "runs": {},
        "kills": {},
    }
    merged = _kept(before, again)
    assert merged["tasks"] == [100, 500]
    assert merged["kill_tasks"] == 50  # kept, as the kill runs are
    assert merged["kills"] == before["kills"]
    assert merged["runs_per_config"] == {"100": 3, "500": 3}
    assert merged["runs"] == before["runs"]
    assert merged["runs"]["celery-bare"] is not before["runs"]["celery-bare"]  # a copy


class _Probe:
    """A Redis client whose probe counter is set by the test."""

    def __init__(self) -> None:
        self.value: bytes | None = None

    def get(self, key: str) -> bytes | None:
        return self.value


def test_a_run_times_out_only_after_no_task_ended_for_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("bench.integrations.time.monotonic", lambda: now[0])
    probe = _Probe()
    stall = _Stall(probe, Run("rq-bare", 10, "sqlite://", "/tmp"), 60.0)  # type: ignore[arg-type]
    now[0] += 59.0
    assert stall.alive()
    probe.value = b"3"
    now[0] += 2.0  # 61 s from the start, but a task ended: the deadline moved on
    assert stall.alive()
    now[0] += 59.5
    assert stall.alive()
    now[0] += 1.0  # 60.5 s since the probe last went up
    assert not stall.alive()
    probe.value = b"4"
    assert not stall.alive()  # read at most once a second
    now[0] += 1.0
    assert stall.alive()  # read again: moved on
