"""Strings that come from data — file and folder names, class names, labels, model specs, uploaded file names,
and error messages that quote them — shown as text, never as markup or as more than one line.

Image sets come from scrapers and other labs, so a name can hold anything: `<img onerror=…>`, a newline that
forges a log line, a right-to-left override that shows `gpj.exe` as `exe.jpg`, zero-width characters that make
two names look alike. Every place that puts such a string into HTML goes through `esc`; every terminal line
through `printable`. See docs/security.md.
"""

from __future__ import annotations

import html
import re

# Characters that change how the rest of a line is shown instead of showing themselves: C0/C1 controls
# (newline, tab, escape sequences), bidirectional embeddings/overrides/isolates and marks, zero-width
# spaces/joiners, the byte-order mark, line/paragraph separators, and the lone surrogates by which Python
# carries a file name's bytes that are not UTF-8.
_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ud800-\udfff\ufeff\ufff9-\ufffb]"
)
LIMIT = 160  # characters kept of a name; the middle of a longer one is cut


def _visible(match: re.Match) -> str:
    c = match.group(0)
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(value: object, limit: int | None = LIMIT) -> str:
    """`value` as one visible line: invisible and layout-changing characters written as `\\xNN`/`\\uNNNN`
    escapes, and the middle of a text longer than `limit` characters replaced by '…'."""
    text = _INVISIBLE.sub(_visible, str(value))
    if limit is not None and len(text) > limit:
        keep = max(limit - 1, 2)
        text = text[: keep - keep // 3] + "…" + text[len(text) - keep // 3 :]
    return text


def esc(value: object, limit: int | None = LIMIT) -> str:
    """`value` as HTML text: `printable`, then every character that HTML could read as markup (`<>&"'`) escaped.
    The one place where a string from data becomes part of an HTML page."""
    return html.escape(printable(value, limit), quote=True)
