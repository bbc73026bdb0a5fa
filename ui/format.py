"""Text for Markdown: untrusted text made inert, shortened for display, code spans, sizes and durations.

Text that comes from documents or people (passages, file names, workspace and account names, questions) is
shown as text. Everywhere Streamlit reads Markdown (st.markdown, captions, alerts, progress texts, widget
labels: buttons, download buttons, expanders, radio options; image captions) it goes through `md()`;
where Streamlit shows plain text (st.text, dataframes, selectbox and multiselect options, `file_name=`) it
goes as it is, since an escape would show there. The escaping itself is `rag`'s (`escape_markdown`), the one
place the engine and the UI share; nothing here escapes on its own.
"""

from __future__ import annotations

from rag import escape_markdown


def md(text: str) -> str:
    """Untrusted text (a file name, a passage) made safe to place inside Markdown: it shows as the text it
    is, with no link, emphasis, HTML or directive (see `rag.markdown`)."""
    return escape_markdown(text)


def short(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters for display, its end (a file's extension) kept: "long…name.pdf".
    Shorten first, then `md()`: cutting escaped text could split an escape."""
    if len(text) <= limit:
        return text
    tail = min(12, limit // 3)
    return text[: limit - tail - 1] + "…" + text[-tail:]


def code(text: str) -> str:
    """Text as a Markdown code span (rendered literally; backticks dropped so it cannot break out)."""
    return "`" + " ".join(text.replace("`", "'").split()) + "`"


def human_size(size: float) -> str:
    """1536 → '1.5 KB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def human_duration(seconds: float | None) -> str:
    """95 → '1 min 35 s'; None → '—'."""
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
