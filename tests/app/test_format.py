"""ui/format: untrusted text stays text inside Markdown; sizes and durations read naturally."""

from __future__ import annotations

import re

from streamlit.testing.v1 import AppTest

from rag.markdown import JOINER
from ui.format import code, human_duration, human_size, md


def test_md_escapes_every_active_character_once() -> None:
    hostile = "[x](http://e/) ![i](http://e/i.png) <b>*a*</b> `c` # h | ~s~ costs $5 and $6 \\"
    escaped = md(hostile)
    assert not re.search(r"(?<!\\)[\[\]()<>*`#|~$!]", escaped)  # nothing active is left bare
    assert "\\\\$" not in escaped  # a `$` is escaped once: a doubled backslash would leave it live
    # and nothing else changed but invisible word joiners (they keep the URL from being auto-linked)
    assert re.sub(r"\\(.)", r"\1", escaped).replace(JOINER, "") == hostile


def test_code_span_cannot_be_broken_out_of() -> None:
    assert code("a `b`\n c") == "`a 'b' c`"


def test_sizes_and_durations() -> None:
    assert [human_size(n) for n in (512, 1536, 5 * 1024**2, 3 * 1024**4)] == ["512 B", "1.5 KB", "5.0 MB", "3072.0 GB"]
    assert [human_duration(s) for s in (None, 4.4, 95, 3725)] == ["—", "4 s", "1 min 35 s", "1 h 2 min"]


def test_escaped_text_reaches_the_page_as_written() -> None:
    def page() -> None:
        import streamlit as st

        from ui.format import md

        st.markdown(md("price: $5 and $6 *not bold*"))

    at = AppTest.from_function(page)
    at.run()
    assert at.markdown[0].value == "price\\: \\$5 and \\$6 \\*not bold\\*"  # a `:` could start an icon
