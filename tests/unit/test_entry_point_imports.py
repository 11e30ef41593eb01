"""The entry points know job types only through the App: no module of
``jobtrack.cli`` or ``jobtrack.api`` imports ``jobtrack.pipeline`` (the
built-in collection scan), except where the scan itself is the command; and
the pipeline uses no private name of another jobtrack package.

The pipeline is built as a user's app would be: every name it takes from
jobtrack outside ``jobtrack.pipeline`` is public, that is, listed in
``jobtrack.__all__`` when imported from ``jobtrack``, or in the ``__all__`` of
the (non-private) module it is imported from; a module without ``__all__``
exports nothing. ``import jobtrack.x`` of a whole module counts as public
when no part of its dotted name is private."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobtrack

SOURCE = Path(jobtrack.__file__).parent

#: Functions that may import the pipeline lazily: the commands that are the
#: collection scan's own (module, top-level function).
ALLOWED_FUNCTIONS = {("jobtrack.cli.main", "scan"), ("jobtrack.cli.main", "sample")}
#: Modules that are the collection scan's own entry points as a whole: its
#: worker's stage choices, and the API's scan launcher (``POST /api/scans``).
ALLOWED_MODULES = {"jobtrack.cli.worker", "jobtrack.api.scans"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST) -> Iterator[tuple[str | None, ast.Import | ast.ImportFrom]]:
    """Every import statement, with the top-level function it is in (None:
    the module's body, a class, or a ``TYPE_CHECKING`` block)."""

    def walk(node: ast.AST, function: str | None) -> Iterator[tuple[str | None, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            inner = function
            if function is None and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = child.name if node is tree else None
            yield inner, child
            yield from walk(child, inner)

    for function, node in walk(tree, None):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield function, node


def imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement loads (``from a import b`` may load ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: not used in jobtrack, but never let one through unseen
        return [f"<relative>.{base}"]
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def pipeline_imports(source: str, module: str) -> list[str]:
    """Where ``source`` (the module ``module``) imports ``jobtrack.pipeline``
    outside the allowed functions: ``module:line``."""
    if module in ALLOWED_MODULES:
        return []
    found = []
    for function, node in imports(ast.parse(source)):
        loads = imported_modules(node)
        if not any(
            name == "jobtrack.pipeline" or name.startswith(("jobtrack.pipeline.", "<relative>"))
            for name in loads
        ):
            continue
        if (module, function) not in ALLOWED_FUNCTIONS:
            found.append(f"{module}:{node.lineno} (in {function or 'the module body'})")
    return found


def private_imports(source: str, module: str) -> list[str]:
    """Where ``source`` imports a private name (``_x``, or from a private
    module) of a jobtrack package other than the pipeline."""
    found = []
    for _, node in imports(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            names = [alias.name for alias in node.names]
        for name in names:
            if not name.startswith("jobtrack.") or name.startswith("jobtrack.pipeline."):
                continue
            if any(part.startswith("_") and part != "__init__" for part in name.split(".")):
                found.append(f"{module}:{node.lineno} imports {name}")
    return found


def non_public_imports(source: str, module: str) -> list[str]:
    """Where ``source`` imports from jobtrack, outside ``jobtrack.pipeline``,
    a name its module does not list in ``__all__`` (or a private module)."""
    found = []
    for _, node in imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("jobtrack.") and any(
                    part.startswith("_") for part in alias.name.split(".")
                ):
                    found.append(f"{module}:{node.lineno} imports {alias.name}")
            continue
        base = node.module or ""
        if base != "jobtrack" and not base.startswith("jobtrack."):
            continue
        if base == "jobtrack.pipeline" or base.startswith("jobtrack.pipeline."):
            continue
        public = getattr(importlib.import_module(base), "__all__", ())
        for alias in node.names:
            if alias.name not in public:
                found.append(f"{module}:{node.lineno} imports {base}.{alias.name}, not in __all__")
    return found


def modules_of(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (SOURCE / package).rglob("*.py"))


ENTRY_POINTS = modules_of("cli", "api")
PIPELINE = modules_of("pipeline")


def test_the_modules_are_found() -> None:
    names = {module_name(path) for path in ENTRY_POINTS}
    assert {"jobtrack.cli.main", "jobtrack.cli.jobs", "jobtrack.api.app"} <= names
    assert {"jobtrack.pipeline.reconciler"} <= {module_name(path) for path in PIPELINE}
    assert names >= ALLOWED_MODULES


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=module_name)
def test_an_entry_point_does_not_import_the_pipeline(path: Path) -> None:
    module = module_name(path)
    assert pipeline_imports(path.read_text(encoding="utf-8"), module) == []


@pytest.mark.parametrize("path", PIPELINE, ids=module_name)
def test_the_pipeline_imports_no_private_name(path: Path) -> None:
    module = module_name(path)
    assert private_imports(path.read_text(encoding="utf-8"), module) == []


@pytest.mark.parametrize("path", PIPELINE, ids=module_name)
def test_the_pipeline_imports_only_public_names(path: Path) -> None:
    module = module_name(path)
    assert non_public_imports(path.read_text(encoding="utf-8"), module) == []


def test_the_public_names_check_finds_what_it_looks_for() -> None:
    source = """
from jobtrack import App, Settings
from jobtrack import retry_job
from jobtrack.jobs.types import Item, JobType
from jobtrack.jobs.executors import _judged, describe
import jobtrack.store._x
import jobtrack.store
from jobtrack.pipeline.walk import _inside
def f():
    from jobtrack.broker.base import clip, open_broker
"""
    assert non_public_imports(source, "jobtrack.pipeline.x") == [
        "jobtrack.pipeline.x:3 imports jobtrack.retry_job, not in __all__",
        "jobtrack.pipeline.x:5 imports jobtrack.jobs.executors._judged, not in __all__",
        "jobtrack.pipeline.x:5 imports jobtrack.jobs.executors.describe, not in __all__",
        "jobtrack.pipeline.x:6 imports jobtrack.store._x",
        "jobtrack.pipeline.x:10 imports jobtrack.broker.base.open_broker, not in __all__",
    ]


def test_the_checks_find_what_they_look_for() -> None:
    source = """
from jobtrack.pipeline.stages import JOB_TYPE
import jobtrack.pipeline
from jobtrack import pipeline
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from jobtrack.pipeline.catalog import Catalog

def scan():
    from jobtrack.pipeline.sample import generate_sample

async def show():
    def inner():
        from jobtrack.pipeline import failures

class Thing:
    def method(self):
        import jobtrack.pipeline.walk
"""
    assert pipeline_imports(source, "jobtrack.cli.main") == [
        "jobtrack.cli.main:2 (in the module body)",
        "jobtrack.cli.main:3 (in the module body)",
        "jobtrack.cli.main:4 (in the module body)",
        "jobtrack.cli.main:7 (in the module body)",
        "jobtrack.cli.main:14 (in show)",
        "jobtrack.cli.main:18 (in the module body)",
    ]
    assert len(pipeline_imports(source, "jobtrack.cli.jobs")) == 7  # scan() is main's only
    private = """
from jobtrack.store.base import _screen, JobStore
from jobtrack.broker._private import thing
import jobtrack.store._x
from jobtrack.pipeline.walk import _inside
def f():
    from jobtrack.tracking.coalescer import _Entry
"""
    assert private_imports(private, "jobtrack.pipeline.x") == [
        "jobtrack.pipeline.x:2 imports jobtrack.store.base._screen",
        "jobtrack.pipeline.x:3 imports jobtrack.broker._private.thing",
        "jobtrack.pipeline.x:4 imports jobtrack.store._x",
        "jobtrack.pipeline.x:7 imports jobtrack.tracking.coalescer._Entry",
    ]
