"""The HTTP API and the live dashboard (``jobtrack serve``).

``create_app`` and ``ApiConfig`` are imported on first use, so the modules
that build JSON from the store's reads alone (:mod:`jobtrack.api.overview`,
:mod:`jobtrack.api.workers`) can be imported, by ``jobtrack top``, without
the ``api`` extra (FastAPI) installed."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobtrack.api.app import create_app
    from jobtrack.api.config import ApiConfig

__all__ = ["ApiConfig", "create_app"]

_LAZY = {"create_app": "jobtrack.api.app", "ApiConfig": "jobtrack.api.config"}


def __getattr__(name: str) -> Any:
    """``create_app`` and ``ApiConfig``, imported when first asked for.

    :raises AttributeError: any other name.
    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
