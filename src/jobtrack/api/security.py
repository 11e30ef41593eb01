"""Checks made before any route runs (so a refused call has no side effect).

The bearer token: every mutating call needs it, and every call when the
server serves other machines; the dashboard page and ``/healthz`` carry no
data and are always served. On a loopback bind, the Host header must name
this machine (so a page on another site cannot reach the server through a
DNS name rebound to 127.0.0.1). Refusals are JSON, as every error is.
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobtrack.api.config import is_loopback

__all__ = ["MAX_BODY", "BodyLimit", "LoopbackHostGuard", "TokenGuard"]

#: The largest request body taken, in bytes (the largest the API needs is a
#: scan's path, at most 4096 characters).
MAX_BODY = 64 * 1024

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PUBLIC = ("/healthz", "/static/")


class TokenGuard:
    """ASGI middleware: answers 401 (no or a wrong token) or 403 (the server
    has no token, so it takes no mutating call) before the app sees the call."""

    def __init__(self, app: ASGIApp, *, token: str | None, reads_need_token: bool) -> None:
        self.app = app
        self._token = token.strip().encode() if token and token.strip() else None
        self._reads_need_token = reads_need_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._needs_token(scope):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        challenge = [(b"www-authenticate", b'Bearer realm="jobtrack"')] if status == 401 else []
        await send_error(send, status, message, challenge)

    def _needs_token(self, scope: Scope) -> bool:
        path: str = scope["path"]
        if scope["method"] not in _SAFE_METHODS:
            return True
        if path == "/" or path.startswith(_PUBLIC):
            return False
        return self._reads_need_token

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        if self._token is None:
            return 403, "this server takes no changes: it was started without JOBTRACK_API_TOKEN"
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return 401, "this call needs a bearer token (Authorization: Bearer …)"
        if not hmac.compare_digest(token.strip(), self._token):
            return 401, "the bearer token is not valid"
        return None


class LoopbackHostGuard:
    """ASGI middleware for a loopback bind: answers 400 unless the Host
    header names this machine (``localhost`` or a loopback address, any
    port), so a DNS name rebound to 127.0.0.1 reaches nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or _local_host(scope):
            await self.app(scope, receive, send)
            return
        await send_error(send, 400, "invalid Host header")


def _local_host(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"host":
            if any(c in value for c in b"@/?#\\ "):  # a name and a port, nothing else
                return False
            try:
                parts = urlsplit(f"//{value.decode('latin-1')}")
                _ = parts.port  # ValueError for a port that is not one
            except ValueError:
                return False
            return parts.hostname is not None and is_loopback(parts.hostname)
    return False  # HTTP/1.1 requires one; the bind's own address is not a name


async def send_error(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer ``status`` with ``{"error": message}`` as JSON."""
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: answers 413 to a request whose body is over
    ``max_bytes``: by its Content-Length, before reading any of it; without
    one (chunked), once that much has arrived (such a body is read before
    the app runs, then handed on)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_BODY) -> None:
        self.app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is over {self._max} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                # A length past 18 digits is over any cap, and int() refuses
                # one past 4,300 digits.
                digits = value.lstrip(b"0")
                if not value.isdigit() or len(digits) > 18 or int(value) > self._max:
                    await send_error(send, 413, message)
                    return
                await self.app(scope, receive, send)  # the server holds it to its length
                return
        first = await self._read(receive)
        if first is None:
            await send_error(send, 413, message)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return first

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> Message | None:
        """The whole body as one event (or the disconnect that cut it short);
        None once it is over the cap."""
        body = bytearray()
        while True:
            event = await receive()
            if event["type"] != "http.request":
                return event
            body += event.get("body", b"")
            if len(body) > self._max:
                return None
            if not event.get("more_body", False):
                return {"type": "http.request", "body": bytes(body), "more_body": False}
