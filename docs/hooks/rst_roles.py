"""A mkdocs hook: the docstrings' reStructuredText shown as Markdown would.

The docstrings name other objects as Sphinx does (``:class:`~jobtrack.errors.JobNotFound```);
Markdown renders that as ``:class:`` followed by the code. This hook keeps the
code and drops the role, and a leading ``~`` keeps the last name only, as in
Sphinx. A paragraph ending in ``::`` (a literal block follows) ends in one
colon, and a ``::`` alone is dropped.
"""

from __future__ import annotations

import re
from typing import Any

_LITERAL_ALONE = re.compile(r"<p>::</p>\n?")
_LITERAL_END = re.compile(r"::</p>")
_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj|const):<code>(~?)([^<]*)</code>")


def _code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **_: Any) -> str:
    """The page's HTML with the roles and literal-block markers removed."""
    html = _LITERAL_ALONE.sub("", html)
    html = _LITERAL_END.sub(":</p>", html)
    return _ROLE.sub(_code, html)
