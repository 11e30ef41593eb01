"""A mkdocs hook: the docstrings' reStructuredText roles shown as code.

The docstrings name other objects as Sphinx does (``:class:`~jobtrack.errors.JobNotFound```);
Markdown renders that as ``:class:`` followed by the code. This hook keeps the
code and drops the role, and a leading ``~`` keeps the last name only, as in
Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj|const):<code>(~?)([^<]*)</code>")


def _code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **_: Any) -> str:
    """The page's HTML with every role before a code span removed."""
    return _ROLE.sub(_code, html)
