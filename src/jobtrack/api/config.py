"""What ``jobtrack serve`` is told: where scans may look, the token, the bind."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobtrack.errors import ConfigurationError, InvalidRequest
from jobtrack.store.text import text_problem

__all__ = ["ApiConfig", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine alone."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The server's own settings (the store and broker come from ``Settings``).

    :param roots: folders under which ``POST /api/scans`` may scan.
    :param token: the bearer token mutating calls need (all calls, when
        ``reads_need_token``); None refuses every mutating call.
    """

    roots: tuple[Path, ...] = ()
    token: str | None = None
    reads_need_token: bool = False
    stuck_after: float = 300.0
    feed_interval: float = 0.2
    loopback_hosts_only: bool = False  # Host must name this machine (DNS rebinding)

    @classmethod
    def for_bind(
        cls,
        host: str,
        *,
        roots: Sequence[Path] = (),
        token: str | None = None,
        env: Mapping[str, str] = os.environ,
        stuck_after: float = 300.0,
    ) -> ApiConfig:
        """The settings for a server bound to ``host``: the token from
        ``JOBTRACK_API_TOKEN`` unless given, the roots from
        ``JOBTRACK_SCAN_ROOTS`` (``os.pathsep``-separated) unless given. Off
        this machine every call needs the token, so one must be set.

        :raises InvalidRequest: off this machine, no token; a root that is
            not a folder.
        :raises ConfigurationError: (an :class:`InvalidRequest`) the token
            is only whitespace, or holds a NUL or a lone surrogate; a root
            the system cannot look at (a name too long).
        """
        token = _token(token if token is not None else env.get("JOBTRACK_API_TOKEN"))
        if not roots and env.get("JOBTRACK_SCAN_ROOTS"):
            roots = [Path(p) for p in env["JOBTRACK_SCAN_ROOTS"].split(os.pathsep) if p]
        local = is_loopback(host)
        if not local and not token:
            raise InvalidRequest(
                f"binding {host} serves other machines: set JOBTRACK_API_TOKEN (every call"
                " then needs it as a bearer token), or bind 127.0.0.1"
            )
        resolved = []
        for root in roots:
            try:
                found = root.is_dir()
                folder = root.resolve()
            except (OSError, ValueError) as exc:  # a name too long, a loop of links
                raise ConfigurationError(
                    f"scan root {str(root)[:200]!r} cannot be used: {exc}",
                    setting="JOBTRACK_SCAN_ROOTS / --root",
                ) from None
            if not found:
                raise InvalidRequest(f"scan root {root} is not a folder")
            resolved.append(folder)
        return cls(
            roots=tuple(resolved),
            token=token,
            reads_need_token=not local,
            stuck_after=stuck_after,
            loopback_hosts_only=local,
        )


def _token(given: str | None) -> str | None:
    """The token without surrounding whitespace; None when unset or empty.

    :raises ConfigurationError: only whitespace, or a character no header
        can carry as the server compares it (a NUL, a lone surrogate: bytes
        of the environment that are not UTF-8).
    """
    if not given:
        return None
    if not given.strip():
        raise ConfigurationError(
            "JOBTRACK_API_TOKEN is blank (only whitespace): set a token, or unset it",
            setting="JOBTRACK_API_TOKEN",
        )
    problem = text_problem(given, "JOBTRACK_API_TOKEN")
    if problem is not None:
        raise ConfigurationError(problem, setting="JOBTRACK_API_TOKEN")
    return given.strip()
