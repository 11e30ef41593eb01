"""A small website served from a thread, for the crawler example.

``index.html`` links to the first two pages, to a page's fragment and to
another host; each of the ``PAGES`` pages links to the next two (and back
to the index), so a crawl reaches every page only by following links;
``page-07.html`` also links to ``missing.html``, which answers 404.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGES = 30
"""Pages besides the index."""

MISSING = "/missing.html"


def _page(number: int) -> str:
    links = [
        f'<a href="page-{(number + step) % PAGES:02d}.html">next {step}</a>' for step in (1, 2)
    ]
    links.append('<a href="/">home</a>')
    if number == 7:
        links.append(f'<a href="{MISSING}">gone</a>')
    return f"<html><body><h1>page {number}</h1>{''.join(links)}</body></html>"


def pages() -> dict[str, str]:
    """The site: each path and its body."""
    site = {f"/page-{n:02d}.html": _page(n) for n in range(PAGES)}
    site["/"] = (
        "<html><body><h1>home</h1>"
        '<a href="page-00.html">first</a> <a href="/page-01.html#top">second</a>'
        ' <a href="http://elsewhere.invalid/">elsewhere</a> <a href="#">top</a>'
        "</body></html>"
    )
    return site


class _Handler(BaseHTTPRequestHandler):
    site: dict[str, str] = {}
    hits: dict[str, int] = {}
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.hits[self.path] = self.hits.get(self.path, 0) + 1
        body = self.site.get(self.path)
        if body is None:
            self.send_error(404, "File not found")
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@contextmanager
def serve_site() -> Iterator[tuple[str, dict[str, int]]]:
    """Serve the site on a free loopback port; yields its root URL and the
    number of requests per path."""
    hits: dict[str, int] = {}
    handler = type("SiteHandler", (_Handler,), {"site": pages(), "hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
