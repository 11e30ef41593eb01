"""jobtrack's counting guarantees, with a crash possible between any two
steps of an item (see :mod:`tests.chaos.machine` for the rules and the
invariants), and proof that the machine finds the bugs it is meant to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis.internal.conjecture import engine
from hypothesis.stateful import run_state_machine_as_test

from tests.chaos.conftest import EXAMPLES, chaos_settings
from tests.chaos.machine import CrashMachine

ARTIFACTS = Path(os.environ.get("JOBTRACK_TEST_ARTIFACTS", "test-artifacts")) / "chaos"

#: Runs a planted bug gets to be found in (found within a few dozen, usually).
HUNT = 300
#: Seconds the shrinking of a planted bug's failure may take.
SHRINK_SECONDS = 15


class SqliteMachine(CrashMachine):
    """The machine on a SQLite store in a temporary file."""


class EarlyAckMachine(CrashMachine):
    """Planted bug 1: an item is acked before its count is durable."""

    ack_before_durable = True


class KeylessMachine(CrashMachine):
    """Planted bug 2: progress reaches the store without its item keys."""

    drop_keys = True


def test_counting_survives_a_crash_at_every_step() -> None:
    run_state_machine_as_test(SqliteMachine, settings=chaos_settings())


def test_counting_survives_a_crash_at_every_step_on_postgres(chaos_postgres: str) -> None:
    class PostgresMachine(CrashMachine):
        backend = "postgres"
        postgres_database = chaos_postgres

    run_state_machine_as_test(PostgresMachine, settings=chaos_settings(max(EXAMPLES // 5, 5)))


@pytest.fixture
def quick_shrink(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink a failure for :data:`SHRINK_SECONDS` at most (Hypothesis
    gives itself five minutes, a long wait for a failure we plant)."""
    monkeypatch.setattr(engine, "MAX_SHRINKING_SECONDS", SHRINK_SECONDS)


def hunt(machine: type[CrashMachine], name: str) -> tuple[str, str]:
    """Run the machine until it fails (the same runs every time); the
    failure's message and the shrunk steps that make it fail (also saved
    under ``test-artifacts/chaos``)."""
    try:
        run_state_machine_as_test(
            machine,
            settings=chaos_settings(
                HUNT, database=None, derandomize=True, report_multiple_bugs=False
            ),
        )
    except AssertionError as exc:
        steps = "\n".join(getattr(exc, "__notes__", []))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"{name}.txt").write_text(f"{exc}\n\n{steps}\n")
        return str(exc), steps
    pytest.fail(f"{HUNT} runs of {machine.__name__} found no failure")


@pytest.mark.usefixtures("quick_shrink")
def test_an_ack_before_the_flush_is_caught() -> None:
    message, steps = hunt(EarlyAckMachine, "early-ack")
    assert "acked before its count was durable" in message, f"{message}\n{steps}"
    assert "state.ack(" in steps, steps
    print(f"{message}\n{steps}")


@pytest.mark.usefixtures("quick_shrink")
def test_a_lost_key_check_is_caught() -> None:
    message, steps = hunt(KeylessMachine, "no-key-check")
    assert "counted keys" in message or "counted twice" in message, f"{message}\n{steps}"
    assert "state.flush(" in steps, steps
    print(f"{message}\n{steps}")
