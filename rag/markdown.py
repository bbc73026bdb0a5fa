"""Text made safe for Markdown: the one place that escapes what documents, people and models write.

Document text, file names and model output reach the page as Markdown; none of it may form links, images,
HTML, math, emphasis from data, or Streamlit's own directives (`:red[…]`, `:material/…:`, `:smile:`). The
engine escapes the document text it quotes (retrieval-only answers); the UI escapes the rest through
`ui.format.md`.

Backslash escapes are not enough everywhere: GitHub-flavoured Markdown turns bare `https://…`, `www.…` and
`name@host.org` into links after escapes are resolved, and Streamlit draws `:material/…:` icons from
escaped text too. Those are broken with an invisible WORD JOINER (U+2060) where the pattern would
match (before `//`, after `www` and `@`, after a `:` followed by a letter; in model output, which streams,
after every `:` and `@`), so they render as the text they are, unlinked.
"""

from __future__ import annotations

import re

JOINER = "\u2060"
"""WORD JOINER: zero-width, invisible, and not part of any link or directive pattern."""

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~$:])")
_LINE_START = re.compile(r"^(\s*)([-=])|^(\s*\d+)([.)])", re.MULTILINE)  # bullets, setext rules, numbered items
# Characters that would let model output (which may repeat document text) form links, images,
# HTML or math in Markdown; escaped one by one, so it also works on streamed pieces.
_ACTIVE = re.compile(r"([\\\[\]<>$])")
_AUTOLINK = re.compile(r"(?=//)|(?<=@)|(?<=www)|(?<=:)(?=[A-Za-z])", re.IGNORECASE)
_AUTOLINK_PIECE = re.compile(r"(?<=[:@])")  # one character at a time, for streamed pieces


def escape_markdown(text: str) -> str:
    """Document text shown inside Markdown stays text: no links (bare URLs and e-mail addresses included),
    images, HTML, emphasis, lists, headings, math or Streamlit directives."""
    return _LINE_START.sub(_escape_line_start, _MD_SPECIAL.sub(r"\\\1", _defuse(text)))


def neutralize_markdown(text: str) -> str:
    """Markdown from a language model made inert: no images, links, HTML or math; emphasis stays.

    Works on streamed pieces alike (the result does not depend on where the text was cut), so a bare URL is
    broken after its `:` and an e-mail address after its `@`; a bare `www.` address may still be linked."""
    return _ACTIVE.sub(r"\\\1", _AUTOLINK_PIECE.sub(JOINER, text))


def escape_math(text: str) -> str:
    """Already-escaped Markdown with its remaining `$` escaped too, so prices never turn into math."""
    return re.sub(r"(?<!\\)\$", r"\\$", text)


def _defuse(text: str) -> str:
    """`text` with a WORD JOINER where a bare URL, e-mail address or Streamlit directive would start."""
    return _AUTOLINK.sub(JOINER, text)


def _escape_line_start(match: re.Match[str]) -> str:
    if match.group(2):
        return f"{match.group(1)}\\{match.group(2)}"
    return f"{match.group(3)}\\{match.group(4)}"
