"""Finding a user's :class:`~jobtrack.runtime.app.App`: ``module:attribute``,
as ``--app`` and ``JOBTRACK_APP`` name it (the convention of uvicorn's and
Celery's ``-A``)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping

from jobtrack.errors import ConfigurationError
from jobtrack.runtime.app import App

__all__ = ["APP_ENV", "load_app"]

#: The environment variable naming the app when ``--app`` is not given.
APP_ENV = "JOBTRACK_APP"
_SETTING = f"--app or {APP_ENV}"


def load_app(spec: str | None, env: Mapping[str, str] = os.environ) -> App | None:
    """The app ``spec`` names (``package.module:attribute``; the attribute may
    be dotted, or a function of no arguments that returns the app), else
    the one ``JOBTRACK_APP`` names, else None (the built-in app).

    The current folder is importable, as for ``python -m``.

    Raises:
        ConfigurationError: the spec is not ``module:attribute``, the module
            cannot be imported or raises while it loads (with its error), the
            attribute is missing or not an App, or the function that makes
            the app raises.
    """
    spec = spec or env.get(APP_ENV) or None
    if spec is None:
        return None
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"{spec!r} is not module:attribute, like myjobs:app", setting=_SETTING
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while it loads
        raise ConfigurationError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", setting=_SETTING
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                f"module {module_name!r} has no attribute {attribute!r}", setting=_SETTING
            ) from None
    if callable(target) and not isinstance(target, App):
        try:
            target = target()
        except Exception as exc:
            raise ConfigurationError(
                f"{spec!r} failed to make the app: {type(exc).__name__}: {exc}", setting=_SETTING
            ) from exc
    if not isinstance(target, App):
        raise ConfigurationError(
            f"{spec!r} is a {type(target).__name__}, not a jobtrack App", setting=_SETTING
        )
    return target
