"""Which PostgreSQL connection failures are configuration errors.

A server that is down or busy is an outage: the store waits for it. A URL
that does not parse, a port out of range, an ``sslmode`` libpq does not
know, a login the server refuses or a database that does not exist will
never get better by waiting, so they raise
:class:`~jobtrack.errors.ConfigurationError` at once, naming the setting.

libpq gives no SQLSTATE for a failed connection (psycopg's ``sqlstate`` is
None there, as its maintainers say), so the server's refusals are told by
their words, libpq's and the server's (English, as the server sends them
before a session has a locale); a SQLSTATE is used where there is one.
"""

from __future__ import annotations

import re

import psycopg
from psycopg.conninfo import conninfo_to_dict

from jobtrack.errors import ConfigurationError, masked_url
from jobtrack.store.base import STORE_SETTING
from jobtrack.store.text import text_problem

__all__ = ["STORE_SETTING", "check_url", "masked", "refusal"]
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# invalid_catalog_name, invalid_authorization_specification, invalid_password
_REFUSED_SQLSTATES = {"3D000", "28000", "28P01"}
_REFUSED_WORDS = (
    "does not exist",  # the database or the role (3D000, 28000)
    "password authentication failed",  # 28P01
    "authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "permission denied for database",
    "not permitted to log in",
    "SSL was required",
    "connection is bad: invalid",  # a conninfo value libpq refused before connecting
)
_FATAL = re.compile(r"FATAL:\s+(.*)", re.DOTALL)


def masked(url: str) -> str:
    """``url`` with its password shown as ``***`` (a URL or a key=value string)."""
    return masked_url(url)


def check_url(url: str) -> None:
    """Refuse a URL that can never connect, before trying to.

    :raises ConfigurationError: it holds a NUL (libpq would read the URL
        only up to it) or a lone surrogate, does not parse, names an
        unknown option, a port outside 1-65535 or an ``sslmode`` libpq does
        not know.
    """

    shown = _clipped(masked(url))

    def refuse(why: str) -> ConfigurationError:
        return ConfigurationError(f"bad store URL {shown}: {why}", setting=STORE_SETTING)

    problem = text_problem(url, "a store URL")
    if problem is not None:
        shown = _clipped(ascii(masked(url)))
        raise refuse(problem)
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise refuse(_clipped(str(exc).strip().replace(url, masked(url)))) from None
    for port in str(params.get("port", "5432")).split(","):
        # ASCII digits only: str.isdigit also takes '²', which int() refuses.
        if port and not (
            port.isascii()
            and port.isdigit()
            and len(port.lstrip("0")) <= 5
            and 1 <= int(port) <= 65535
        ):
            raise refuse(f"port {_clipped(repr(port), 40)} is not a number in 1-65535")
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in _SSLMODES:
        raise refuse(f"sslmode {_clipped(repr(sslmode), 40)} is not one of {', '.join(_SSLMODES)}")


def _clipped(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def refusal(exc: psycopg.Error, url: str) -> ConfigurationError | None:
    """The configuration error a failed connection means, or None for an
    outage (the server down, starting, or out of connections)."""
    text = str(exc).strip()
    if exc.sqlstate not in _REFUSED_SQLSTATES and not any(w in text for w in _REFUSED_WORDS):
        return None
    fatal = _FATAL.search(text)
    why = (fatal.group(1) if fatal else text).strip().splitlines()[0]
    return ConfigurationError(
        f"PostgreSQL refused the connection to {masked(url)}: {why}", setting=STORE_SETTING
    )
