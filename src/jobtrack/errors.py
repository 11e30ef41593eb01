"""The one exception root of jobtrack.

Every error jobtrack raises on purpose derives from :class:`JobtrackError`;
driver errors (sqlite3, psycopg, aio-pika, Pillow) are translated once, at the
backend boundary, and chained with ``raise ... from exc``::

    JobtrackError
    ├── NotFound
    │   ├── JobNotFound
    │   ├── StageNotFound
    │   └── CollectionNotFound
    ├── InvalidRequest              (also a ValueError)
    │   ├── InvalidIncrement
    │   ├── PathRefused
    │   ├── MalformedMessage
    │   └── ConfigurationError      a setting is wrong: waiting will not help
    ├── Conflict                    the record changed since it was read
    ├── StoreError
    │   ├── StoreUnavailable        transient: retry later
    │   └── StoreMissing            no database where one was expected
    ├── BrokerError
    │   ├── BrokerUnavailable       transient: retry later
    │   │   └── PartlySettled       dead letters sent back or dropped part way: what was done
    │   ├── QueueRefused            the server refuses a queue: retrying will not help
    │   └── TooManyDeadLetters      more dead letters than are taken at once
    ├── ImageError                  corrupt, truncated, hostile or unsupported image
    ├── WorkerCrashed               an image worker process died mid-item
    └── ScanNotStarted              the server cannot start a scan now: try again later

Every exception class that derives from :class:`JobtrackError` is defined
here, and this tree lists them all (a unit test compares it with the
classes). The command line's own usage errors are Click's
(``cli.options.SettingError``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "CollectionNotFound",
    "ConfigurationError",
    "Conflict",
    "ImageError",
    "InvalidIncrement",
    "InvalidRequest",
    "JobNotFound",
    "JobtrackError",
    "MalformedMessage",
    "NotFound",
    "PartlySettled",
    "PathRefused",
    "QueueRefused",
    "ScanNotStarted",
    "StageNotFound",
    "StoreError",
    "StoreMissing",
    "StoreUnavailable",
    "TooManyDeadLetters",
    "WorkerCrashed",
    "masked_url",
]

_Taken = TypeVar("_Taken")


class JobtrackError(Exception):
    """Root of every error jobtrack raises on purpose."""


class NotFound(JobtrackError):
    """A job, stage or collection that does not exist."""


class JobNotFound(NotFound):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


class StageNotFound(NotFound):
    """The job exists but has no stage of this name."""

    def __init__(self, job_id: str, stage: str) -> None:
        super().__init__(f"job {job_id!r} has no stage {stage!r}")
        self.job_id = job_id
        self.stage = stage


class CollectionNotFound(NotFound):
    """No collection has this id."""

    def __init__(self, collection_id: str) -> None:
        super().__init__(f"collection {collection_id!r} not found")
        self.collection_id = collection_id


class InvalidRequest(JobtrackError, ValueError):
    """The caller asked for something that can never succeed."""


class InvalidIncrement(InvalidRequest):
    """A negative, empty or absurd increment."""


class PathRefused(InvalidRequest):
    """A path that does not exist, is not a folder, or escapes its root."""


class MalformedMessage(InvalidRequest):
    """A broker message that does not follow the message schema."""


class ConfigurationError(InvalidRequest):
    """A setting that can never work: a URL that does not parse, a login the
    server refuses, a database or virtual host that does not exist.

    Raised at once rather than retried like an outage; the message names
    the setting (``setting``) and shows its URL with the password masked.
    """

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(f"{message} (check {setting})")
        self.setting = setting


class Conflict(JobtrackError):
    """The record changed since it was read; the operation was not done."""


class StoreError(JobtrackError):
    """The store failed to carry out an operation."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or is busy; the operation may succeed later."""


class StoreMissing(StoreError):
    """Opening an existing store was asked for, and there is none."""


class BrokerError(JobtrackError):
    """The broker failed to carry out an operation."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached; the operation may succeed later."""


class PartlySettled(BrokerUnavailable, Generic[_Taken]):
    """Sending dead letters back (or dropping them) stopped part way, the
    broker lost: ``taken`` holds what was done (sent back or dropped, in
    order), ``not_taken`` the ids chosen and not done (still dead letters)."""

    def __init__(self, message: str, *, taken: Sequence[_Taken], not_taken: Sequence[str]) -> None:
        super().__init__(message)
        self.taken = list(taken)
        self.not_taken = list(not_taken)


class TooManyDeadLetters(BrokerError):
    """A dead-letter queue holds more messages than are listed, sent back
    or dropped at once (they are held in memory, in order, to keep it)."""


class QueueRefused(BrokerError):
    """The server refused a queue: it exists with other settings, or the user
    may not use it. Retrying will not help."""


class ImageError(JobtrackError):
    """An image that cannot be turned into a rendition: corrupt, truncated,
    a decompression bomb, or a format we do not read."""


class WorkerCrashed(JobtrackError):
    """The worker process running an item died before it finished (the
    image pool, :class:`~jobtrack.pipeline.pool.RenderPool`, has replaced
    it); the item may be retried."""


class ScanNotStarted(JobtrackError):
    """The server could not start the scan now (too many running, or it did
    not start in time): try again later."""


# Where a list of URLs (the broker setting's, comma-separated) starts the next one.
_NEXT_URL = re.compile(r",(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")
# Where URLs separated by spaces or newlines start the next one.
_NEXT_URL_AFTER_SPACE = re.compile(r"(\s+)(?=[A-Za-z][A-Za-z0-9+.-]*://)")
# What a URL's user:password@ looks like, when urlsplit cannot say: the
# password runs to the URL's last @ (more hidden, never less).
_LOGIN = re.compile(r"(://[^:/?#@\s]*:).*@", re.DOTALL)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def masked_url(url: str) -> str:
    """``url`` with its password shown as ``***``, for messages and logs: a
    URL, one that does not parse, a libpq ``key=value`` string, or a list
    of URLs separated by commas (each masked). A password urlsplit cannot
    find (an unencoded ``/``, ``?`` or ``#`` in it, a control character in
    the URL, URLs run together) is masked by pattern: everything from the
    colon after the user to the URL's last ``@``. URLs separated by spaces
    or newlines are masked one by one, the separators kept."""
    if _NEXT_URL.search(url):
        return ",".join(_masked_one(one.lstrip()) for one in _NEXT_URL.split(url))
    return _masked_one(url)


def _masked_one(url: str) -> str:
    if "://" not in url:
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
    pieces = _NEXT_URL_AFTER_SPACE.split(url)
    if len(pieces) > 1:  # the separators at odd places
        return "".join(piece if n % 2 else _masked_one(piece) for n, piece in enumerate(pieces))
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a URL that does not parse
        password = None
    # urlsplit drops tabs and newlines (two URLs on two lines read as one),
    # and ends the login at an unencoded / ? or #: mask by pattern then.
    if password is None or url.count("://") > 1 or _UNSAFE.search(url.strip()):
        if "@" in url.partition("://")[2]:
            return _LOGIN.sub(r"\1***@", url)
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
