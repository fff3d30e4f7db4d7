"""Report, escaping: every value a Markdown report puts in a table cell or a line goes
through here, so a name or message holding `|`, backticks, `<`, newlines or thousands of
characters cannot split a table row, open a code span or HTML tag, or swamp the page."""

from __future__ import annotations

import re
from typing import Any

MAX_CELL = 120  # characters of a value kept in a cell; longer ones keep both ends
_NEWLINES = re.compile(r"\s*[\r\n]+\s*")
_PUNCTUATION = re.compile(r"([\\`|])")


def shorten(text: str, limit: int = MAX_CELL) -> str:
    """`text` on one line, at most `limit` characters: a longer one keeps its start and end
    (where names differ) around an ellipsis."""
    one_line = _NEWLINES.sub(" ⏎ ", text).strip()
    if len(one_line) <= limit:
        return one_line
    head = (limit - 1) * 2 // 3
    return one_line[:head] + "…" + one_line[len(one_line) - (limit - 1 - head) :]


def cell(value: Any, limit: int = MAX_CELL) -> str:
    """Plain text for a table cell (or a line): one line, shortened, with `\\`, backticks and
    `|` backslash-escaped and `&`, `<` as HTML entities, so it renders as written."""
    text = shorten("" if value is None else str(value), limit)
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    return _PUNCTUATION.sub(r"\\\1", text)


def code(value: Any, limit: int = MAX_CELL, table: bool = True) -> str:
    """`value` as an inline code span: one line, shortened, a fence longer than any run of
    backticks inside; in a table cell (`table`) `|` is escaped (GFM unescapes it inside code
    spans in tables; elsewhere a code span shows the backslash). In a table, a value with a
    backslash is shown as escaped plain text instead (a backslash before `|` inside a code
    span cannot be written unambiguously there)."""
    text = shorten("" if value is None else str(value), limit)
    if not text:
        return "–"
    if table and "\\" in text:
        return cell(text, limit)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    if table:
        text = text.replace("|", "\\|")
    return f"{fence}{pad}{text}{pad}{fence}"


def link_target(path: str) -> str:
    """A link or image destination: in angle brackets when it holds spaces or brackets."""
    if re.search(r"[\s()<>]", path):
        return "<" + path.replace("<", "%3C").replace(">", "%3E") + ">"
    return path
