"""The public surface: sorted, complete, importable."""

from __future__ import annotations

import importlib

import pytest

import jobtrack

PACKAGES = [
    "jobtrack",
    "jobtrack.errors",
    "jobtrack.model",
    "jobtrack.store",
    "jobtrack.broker",
    "jobtrack.tracking",
    "jobtrack.pipeline.catalog",
    "jobtrack.runtime",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    # isort style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    for symbol in exported:
        assert hasattr(module, symbol), symbol


def test_top_level_names() -> None:
    assert jobtrack.__version__ == "0.1.0"
    assert {"ProgressTracker", "JobStore", "open_store", "Job"} <= set(jobtrack.__all__)
