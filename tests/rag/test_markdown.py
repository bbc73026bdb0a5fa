"""Escaping for Markdown: what documents, names and models write stays text (the browser test reads the DOM)."""

from __future__ import annotations

import re

import pytest

from rag.markdown import JOINER, escape_markdown, neutralize_markdown

# What GitHub-flavoured Markdown links without any brackets, and Streamlit's own directives.
AUTOLINK = re.compile(r"https?://|www\.|[\w.+-]+@[\w-]+\.\w|mailto:\w", re.IGNORECASE)
DIRECTIVE = re.compile(r":(material/\w+|[a-z]+(-[a-z]+)*\[|\w+:)")


def _shown(markdown: str) -> str:
    """What a reader sees of escaped Markdown: backslash escapes resolved, word joiners invisible."""
    return re.sub(r"\\(.)", r"\1", markdown).replace(JOINER, "")


@pytest.mark.parametrize(
    "text",
    [
        "[x](mailto:a@b.c) <b>bold.txt",
        "see https://example.com/a_b and www.example.org or write to warden@example.net",
        "__init__.py ~~gone~~ *stars* `code` $5 :smile: :material/home: :red[alarm] #tag",
        "1. a list\n2) another\n- a bullet\n+ plus\nHeading\n===",
        "HTTP://EXAMPLE.COM WWW.EXAMPLE.COM",
    ],
)
def test_escaped_text_reads_as_itself_and_forms_nothing(text: str) -> None:
    escaped = escape_markdown(text)
    assert _shown(escaped) == text
    visible = escaped.replace("\\", "")
    assert not AUTOLINK.search(visible), visible
    assert not DIRECTIVE.search(visible), visible
    assert not re.search(r"(?<!\\)[\[\]<>*_`~$#|()]", escaped), escaped  # every active character is escaped
    assert not re.search(r"^\s*\d+[.)]", escaped, re.MULTILINE)  # no ordered list starts
    assert not re.search(r"(?m)^[-+=]", escaped)  # no bullet, no setext heading


def test_model_output_is_defused_piece_by_piece() -> None:
    """Answers stream: defusing each piece gives what defusing the whole gives, links and addresses broken."""
    answer = "See https://example.com/x or mail warden@example.net: **bold** stays, ![img](http://x) does not."
    whole = neutralize_markdown(answer)
    assert "".join(neutralize_markdown(ch) for ch in answer) == whole
    assert not AUTOLINK.search(whole) and "**bold**" in whole and "!\\[img\\]" in whole
    assert _shown(whole) == answer
