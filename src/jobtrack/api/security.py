"""The bearer token, checked before any route runs (so a refused call has no
side effect): every mutating call needs it, and every call when the server
serves other machines. The dashboard page and ``/healthz`` carry no data and
are always served."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["TokenGuard"]

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
        body = json.dumps({"error": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="jobtrack"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

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
