"""Text made safe for Markdown: the one place that escapes what documents and models write.

Document text and model output reach the page as Markdown; none of it may form links, images, HTML or
math. The engine escapes the document text it quotes (retrieval-only answers); the UI escapes the rest.
"""

from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~$])")
# Characters that would let model output (which may repeat document text) form links, images,
# HTML or math in Markdown; escaped one by one, so it also works on streamed pieces.
_ACTIVE = re.compile(r"([\\\[\]<>$])")


def escape_markdown(text: str) -> str:
    """Document text shown inside Markdown must stay text: no links, images, HTML, emphasis or math."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def neutralize_markdown(text: str) -> str:
    """Markdown from a language model made inert: no images, links, HTML or math; emphasis stays."""
    return _ACTIVE.sub(r"\\\1", text)


def escape_math(text: str) -> str:
    """Already-escaped Markdown with its remaining `$` escaped too, so prices never turn into math."""
    return re.sub(r"(?<!\\)\$", r"\\$", text)
