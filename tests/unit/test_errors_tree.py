"""The error tree in ``jobtrack.errors``' docstring is the real hierarchy:
every exception class jobtrack defines, under its real parent, nothing more."""

from __future__ import annotations

import importlib
import pkgutil

import jobtrack
from jobtrack import errors
from jobtrack.errors import JobtrackError

_BRANCHES = ("├── ", "└── ")


def _documented_tree() -> dict[str, str | None]:
    """Each class name of the docstring's tree, with its parent's name (None
    for the root), read from the drawing's indentation."""
    doc = errors.__doc__ or ""
    lines = doc.split("::\n", 1)[1].strip("\n").splitlines()
    tree: dict[str, str | None] = {}
    path: list[str] = []  # the names from the root down to the last line's
    for line in lines:
        if not line.strip():
            break  # the drawing ends at the first blank line
        body = line.strip()
        for branch in _BRANCHES:
            if branch in line:
                start = line.index(branch)
                depth = (start - 4) // 4 + 1  # 4 spaces of indentation, 4 per level
                body = line[start + len(branch) :]
                break
        else:
            depth = 0
        name = body.split()[0]
        del path[depth:]
        tree[name] = path[-1] if path else None
        path.append(name)
    return tree


def _real_tree() -> dict[str, str | None]:
    """Each exception class jobtrack defines, with its parent in the tree."""
    for module in pkgutil.walk_packages(jobtrack.__path__, "jobtrack."):
        if module.name != "jobtrack.__main__":
            importlib.import_module(module.name)  # every class defined anywhere is seen
    tree: dict[str, str | None] = {JobtrackError.__name__: None}
    pending: list[type[JobtrackError]] = [JobtrackError]
    while pending:
        parent = pending.pop()
        for child in parent.__subclasses__():
            if child.__module__.startswith("jobtrack"):
                tree[child.__name__] = parent.__name__
                pending.append(child)
    return tree


def test_the_docstring_tree_is_the_real_hierarchy() -> None:
    assert _documented_tree() == _real_tree()


def test_every_exception_class_is_defined_in_errors_and_exported() -> None:
    real = _real_tree()
    for name in real:
        cls = getattr(errors, name)
        assert cls.__module__ == "jobtrack.errors", name
    assert set(real) <= set(errors.__all__)


def test_the_reader_sees_the_tree_as_drawn() -> None:
    tree = _documented_tree()
    assert tree["JobtrackError"] is None
    assert tree["StoreUnavailable"] == "StoreError"
    assert tree["ConfigurationError"] == "InvalidRequest"
    assert tree["WorkerCrashed"] == "JobtrackError"
    assert tree["ScanNotStarted"] == "JobtrackError"
    assert tree["PartlySettled"] == "BrokerUnavailable"
    assert tree["TooManyDeadLetters"] == "BrokerError"
    assert len(tree) == 22
