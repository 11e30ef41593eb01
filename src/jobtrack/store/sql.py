"""SQL kept in named ``.sql`` resources: queries and versioned migrations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

__all__ = ["Migration", "load_queries", "migrations"]

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_QUERY_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(package: str, name: str = "queries.sql") -> dict[str, str]:
    """The named queries of a ``.sql`` resource (``-- name: x`` headers)."""
    text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
    parts = _QUERY_HEADER.split(text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``NNNN_name.sql`` file of a migrations package."""

    version: int
    name: str
    resource: Traversable

    def read(self) -> str:
        """The migration's SQL."""
        return self.resource.read_text(encoding="utf-8")


def migrations(package: str) -> list[Migration]:
    """The migrations of ``package``, in version order."""
    found = []
    for entry in resources.files(package).iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry))
    return sorted(found, key=lambda m: m.version)
