"""Turning crewline's data into safe HTML: agent Markdown, highlighted code, diffs, money, times.

Rule upheld here: everything an agent or a user wrote is untrusted. Markdown is rendered with raw
HTML disabled (it shows as text) and markdown-it's link validation (no `javascript:` links); code
is highlighted by Pygments, which escapes it; Jinja autoescapes the rest. Nothing here runs in the
browser: highlighting and diffs are done on the server, so the page needs no script to read.
"""

from __future__ import annotations

import difflib
import html
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup
from pygments import format as pygments_format
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name, guess_lexer_for_filename
from pygments.util import ClassNotFound

_FORMATTER = HtmlFormatter(nowrap=False, cssclass="code")

# Highlighting is for reading code, and some of Pygments' lexers are super-linear on odd input
# (a 6 KB C++ block of one long line took 6.5 s): past these, code is shown plain, and a lexer
# that runs out of time gives up for plain text too.
HIGHLIGHT_MAX_CHARS = 100_000
HIGHLIGHT_MAX_LINE = 400
HIGHLIGHT_SECONDS = 0.5
# Markdown past this is shown as plain text (a 30 MB answer is not a document anyone reads).
MARKDOWN_MAX_CHARS = 300_000


def _plain(text: str, note: str = "") -> Markup:
    said = f'<p class="hint">{html.escape(note)}</p>' if note else ""
    return Markup(f'{said}<div class="code"><pre>{html.escape(text)}</pre></div>')


def _highlightable(text: str) -> str | None:
    """Why `text` is shown plain, or None when it can be highlighted."""
    if len(text) > HIGHLIGHT_MAX_CHARS:
        return f"not highlighted: {len(text):,} characters"
    if any(len(line) > HIGHLIGHT_MAX_LINE for line in text.splitlines()):
        return f"not highlighted: a line over {HIGHLIGHT_MAX_LINE} characters"
    return None


def _timed(tokens: Iterator[Any], deadline: float) -> Iterator[Any]:
    for n, token in enumerate(tokens):
        if n % 64 == 0 and time.monotonic() > deadline:
            raise TimeoutError
        yield token


def code(text: str, language: str | None = None, filename: str | None = None) -> Markup:
    """Highlighted, escaped code; plain escaped text when the language is unknown, the text too
    large or its lines too long to highlight, or the lexer too slow on it."""
    lexer = None
    try:
        if language:
            lexer = get_lexer_by_name(language)
        elif filename:
            lexer = guess_lexer_for_filename(filename, text[:4000])
    except ClassNotFound:
        lexer = None
    if lexer is None:
        return _plain(text)
    why = _highlightable(text)
    if why:
        return _plain(text, why)
    try:
        tokens = list(_timed(lexer.get_tokens(text), time.monotonic() + HIGHLIGHT_SECONDS))
    except TimeoutError:
        return _plain(text, f"not highlighted: took over {HIGHLIGHT_SECONDS:g} s")
    return Markup(pygments_format(tokens, _FORMATTER))


def _fence(md: MarkdownIt, tokens: Any, idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    language = token.info.strip().split(" ")[0] if token.info else None
    return str(code(token.content, language or None))


_MD = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_MD.add_render_rule("fence", _fence)
_MD.add_render_rule("code_block", _fence)


def markdown(text: str | None) -> Markup:
    """An agent's output as HTML (raw HTML in it shows as text)."""
    text = text or ""
    if len(text) > MARKDOWN_MAX_CHARS:
        return _plain(text, f"shown as plain text: {len(text):,} characters")
    return Markup(_MD.render(text))


def money(value: Decimal | str | float | None, places: int = 6) -> str:
    """A plain decimal: `0.000123`, never `1.2E-4` or `0E-10`; '—' when unknown."""
    if value is None or value == "":
        return "—"
    amount = Decimal(str(value))
    text = f"{amount:.{places}f}"
    return text.rstrip("0").rstrip(".") if "." in text and amount != 0 else f"{amount:.2f}"


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; crewline stores UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def elapsed(start: datetime | None, end: datetime | None, now: datetime) -> str:
    """How long from `start` to `end` (or now, while it runs)."""
    if start is None:
        return ""
    seconds = max((_utc(end or now) - _utc(start)).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"


def word_diff(old: str, new: str) -> tuple[Markup, Markup]:
    """The two texts with what differs marked (`<del>` in the first, `<ins>` in the second)."""
    a, b = old.split(" "), new.split(" ")
    left: list[str] = []
    right: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        old_part, new_part = html.escape(" ".join(a[i1:i2])), html.escape(" ".join(b[j1:j2]))
        if op == "equal":
            left.append(old_part)
            right.append(new_part)
            continue
        if old_part:
            left.append(f"<del>{old_part}</del>")
        if new_part:
            right.append(f"<ins>{new_part}</ins>")
    return Markup(" ".join(left)), Markup(" ".join(right))


def file_tree(paths: list[str]) -> list[dict[str, Any]]:
    """Artifact paths as a sorted tree: [{name, path (files only), children}]."""
    root: dict[str, Any] = {"children": {}}
    for path in sorted(paths):
        node = root
        parts = PurePosixPath(path).parts
        for depth, part in enumerate(parts):
            leaf = depth == len(parts) - 1
            node = node["children"].setdefault(
                part, {"name": part, "path": path if leaf else None, "children": {}}
            )

    def flatten(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {**child, "children": flatten(child)}
            for child in sorted(
                node["children"].values(), key=lambda c: (c["path"] is not None, c["name"])
            )
        ]

    return flatten(root)


PYGMENTS_CSS = _FORMATTER.get_style_defs(".code")
