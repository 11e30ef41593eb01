"""The chaos suite's settings and its PostgreSQL database.

``JOBTRACK_CHAOS_EXAMPLES`` sets how many runs of the machine each test
makes on SQLite (50 by default: under a minute); PostgreSQL makes a fifth
of that, at least 5. ``JOBTRACK_CHAOS_STEPS`` sets the steps of a run (40).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.postgres import require_server, scratch_database

EXAMPLES = int(os.environ.get("JOBTRACK_CHAOS_EXAMPLES", "50"))
STEPS = int(os.environ.get("JOBTRACK_CHAOS_STEPS", "40"))


def chaos_settings(examples: int = EXAMPLES, **options: object) -> settings:
    """Hypothesis settings for a run of the machine: ``examples`` runs of
    ``STEPS`` steps, no deadline (a store write may wait on a busy machine)."""
    return settings(
        max_examples=examples,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def chaos_postgres() -> Iterator[str]:
    """A database for the module's PostgreSQL runs (a schema per run);
    skipped without a server, failed in CI."""
    require_server()
    with scratch_database("chaos") as name:
        yield name
