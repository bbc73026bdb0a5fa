"""End to end in headless Chromium: drop a file, watch it index, ask, and read a cited answer."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.browser.conftest import RunningApp, sidebar_labels

pytestmark = [pytest.mark.browser, pytest.mark.milvus]

QUESTION = "How do I create a zoo series from a numeric vector?"


def _upload(page, app: RunningApp, *files: Path) -> None:  # noqa: ANN001
    page.goto(f"{app.url}/upload")
    page.wait_for_selector("input[type=file]", state="attached")
    page.set_input_files("input[type=file]", [str(f) for f in files])
    for f in files:
        page.get_by_text(f.name, exact=True).first.wait_for()  # the upload reached the server
    page.get_by_role("button", name="Index files").click()


def _assert_routed(page) -> None:  # noqa: ANN001
    """The sidebar is app.py's st.navigation, not a list built from the pages/ folder."""
    nav = page.get_by_test_id("stSidebarNav")
    nav.get_by_role("link", name="Home", exact=True).wait_for()
    labels = sidebar_labels(page)
    assert labels[:4] == ["Home", "Upload", "Documents", "Chat"] and "app" not in labels, labels


def _ask(page, question: str) -> None:  # noqa: ANN001
    box = page.get_by_placeholder("Ask a question about your documents")
    box.fill(question)
    box.press("Enter")


def _ask_in_chat(page, question: str) -> None:  # noqa: ANN001
    """Go to Chat by the sidebar, as a user does after an upload, and ask."""
    page.get_by_role("link", name="Chat", exact=True).click()
    page.get_by_placeholder("Ask a question about your documents").wait_for()
    _ask(page, question)


def test_drop_a_pdf_watch_it_index_and_chat_with_cited_sources(page, streamlit_app: RunningApp, corpus: Path) -> None:  # noqa: ANN001
    _upload(page, streamlit_app, corpus / "zoo.pdf")  # a deep link is the server's first request
    _assert_routed(page)

    # live progress for the file, then the job's summary
    page.get_by_text(re.compile(r"zoo\.pdf · (queued|reading|chunking|embedding|storing|done)")).first.wait_for()
    page.get_by_text("Indexing 1 file(s)").first.wait_for()
    summary = page.get_by_text(re.compile(r"Indexed \(1\): zoo\.pdf"))
    summary.wait_for(timeout=240_000)
    assert "chunk(s) written" in page.inner_text("body")
    sid = re.search(r"sid=([\w-]+)", page.url)
    assert sid, page.url

    # the chat page, through the sidebar navigation
    page.get_by_role("link", name="Chat", exact=True).click()
    page.get_by_placeholder("Ask a question about your documents").wait_for()
    _assert_routed(page)
    _ask(page, QUESTION)

    answer = page.get_by_text(re.compile(r"According to zoo\.pdf, p\. \d+")).first
    answer.wait_for(timeout=120_000)
    sources = page.get_by_text(re.compile(r"Sources: \[1\] zoo\.pdf, p\. \d+")).first
    sources.wait_for()
    cited_page = re.search(r"zoo\.pdf, p\. (\d+)", answer.inner_text()).group(1)
    assert f"[1] zoo.pdf, p. {cited_page}" in sources.inner_text()

    # the sources expander shows file, page, score and the passage as text
    page.get_by_text(re.compile(r"^Sources \(\d+\)$")).first.click()
    first_source = page.get_by_text(re.compile(rf"\[1\] zoo\.pdf, p\. {cited_page} · score 0\.\d+")).first
    first_source.wait_for()

    # a refresh keeps the session id and the conversation
    page.reload()
    page.get_by_text(QUESTION).first.wait_for()
    page.get_by_text(re.compile(r"According to zoo\.pdf, p\. \d+")).first.wait_for()
    assert f"sid={sid.group(1)}" in page.url


class _Tracker:
    """A loopback HTTP server counting every request (a stand-in for an outside host)."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        tracker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                tracker.hits.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_hostile_document_text_neither_runs_nor_loads(page, streamlit_app: RunningApp, tmp_path: Path) -> None:  # noqa: ANN001
    tracker = _Tracker()
    try:
        origin = f"http://127.0.0.1:{tracker.port}"
        hostile = tmp_path / "pelicans.txt"
        hostile.write_text(
            f'![p]({origin}/md.png) <img src="{origin}/img.png" onerror="window.__pwned=1"> '
            "<script>window.__pwned=2</script>\n" + "Pelicans store fish in their throat pouch. " * 12,
            encoding="utf-8",
        )
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        _upload(page, streamlit_app, hostile)
        page.get_by_text(re.compile(r"Indexed \(1\): pelicans\.txt")).wait_for(timeout=240_000)

        _ask_in_chat(page, "Where do pelicans store fish?")
        answer = page.get_by_text(re.compile(r"According to pelicans\.txt")).first
        answer.wait_for(timeout=120_000)
        page.get_by_text(re.compile(r"^Sources \(\d+\)$")).first.click()
        page.get_by_text("Pelicans store fish", exact=False).first.wait_for()
        page.wait_for_timeout(1500)

        assert f"{origin}/md.png" in answer.inner_text().replace("\u2060", "")  # shown as text...
        assert page.evaluate("window.__pwned") is None  # ...no script or handler ran
        assert page.locator(f'img[src^="{origin}"]').count() == 0  # ...no image element was made
        assert tracker.hits == [] and not [u for u in requests if u.startswith(origin)]  # ...nothing was fetched
    finally:
        tracker.close()


def test_a_source_opens_on_its_page_with_the_passage_highlighted(page, streamlit_app: RunningApp, corpus: Path) -> None:  # noqa: ANN001
    from io import BytesIO

    import numpy as np
    from PIL import Image

    _upload(page, streamlit_app, corpus / "zoo.pdf")
    page.get_by_text(re.compile(r"(Indexed|Already present \(unchanged\)) \(1\): zoo\.pdf")).wait_for(timeout=240_000)
    _ask_in_chat(page, "Who are the authors of the zoo package's introduction?")
    page.get_by_text(re.compile(r"Sources: \[1\] zoo\.pdf, p\. \d+")).last.wait_for(timeout=120_000)

    page.get_by_role("button", name=re.compile(r"^\[1\] zoo\.pdf")).last.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("The passage is highlighted on this page.").wait_for()
    image = dialog.get_by_role("img").first
    image.wait_for()
    shot = Image.open(BytesIO(image.screenshot())).convert("RGB")
    # The marker tint: yellow over white paper is (255, ~243, ~159); no such pixel is on an untouched page.
    r, g, b = np.asarray(shot, dtype=np.int16).transpose(2, 0, 1)
    tinted = int(((r > 230) & (g > 225) & (g < 250) & (b > 120) & (b < 200)).sum())
    assert tinted > 500, tinted
    assert dialog.get_by_role("button", name="Download zoo.pdf").count() == 1


def test_a_scanned_pdf_is_read_by_ocr_and_answers(page, streamlit_app: RunningApp, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.rag.test_ocr import FACTS, write_scanned_pdf

    scan = write_scanned_pdf(tmp_path / "heron-scan.pdf", [[FACTS]])
    _upload(page, streamlit_app, scan)
    page.get_by_text(re.compile(r"heron-scan\.pdf · (queued|reading|ocr)")).first.wait_for()
    page.get_by_text(re.compile(r"Indexed \(1\): heron-scan\.pdf")).wait_for(timeout=300_000)
    _ask_in_chat(page, "Who founded the Quillfeather Observatory, and when?")
    sources = page.get_by_text(re.compile(r"Sources: \[1\] heron-scan\.pdf, p\. 1")).last
    sources.wait_for(timeout=120_000)


MARKUP_NAME = "[x](mailto:a@b.c) <b>bold.txt"  # Markdown link, HTML bold and an e-mail address; no `/` in a name
MARKUP_WORKSPACE = "__ws__ [x](y) ~~z~~ a@b.c"  # emphasis, a link, strike-through and an e-mail address
JOINER = "\u2060"  # rag.markdown breaks link patterns with it; invisible, so people see the text unchanged
_DOM = """() => {
  const text = (el) => el.textContent.replaceAll('\\u2060', '');
  return {
    body: document.body.innerText.replaceAll('\\u2060', ''),
    hrefs: [...document.querySelectorAll('a')].map((a) => a.getAttribute('href') || ''),
    emphasis: [...document.querySelectorAll('b, strong, em, i, del, s')].map(text),
    tags: document.querySelectorAll('b, img[src^="mailto"], code a').length,
  };
}"""


def _literal(text: str) -> re.Pattern[str]:
    """`text` as the page may render it: the same characters, a word joiner allowed after any of them."""
    return re.compile(f"{JOINER}?".join(re.escape(ch) for ch in text))


def _assert_shown_as_text(page, *texts: str) -> None:  # noqa: ANN001
    """Each text is on the page as itself, and nothing in it became a link, bold, emphasis or a strike."""
    dom = page.evaluate(_DOM)
    for text in texts:
        assert text in dom["body"], (text, dom["body"][:2000])
    assert not [h for h in dom["hrefs"] if h.startswith("mailto:") or "example." in h or h in ("y", "b.c")], dom
    assert dom["tags"] == 0, dom  # Streamlit writes bold as <strong>: a <b> could only come from data
    # Our own bold (a file name in a progress line, a source's heading) holds a whole name, never a piece of it.
    names = (MARKUP_NAME, MARKUP_WORKSPACE)
    pieces = [e for e in dom["emphasis"] if e.strip() and any(e in n and e != n for n in names)]
    assert not pieces, pieces


def test_markup_in_names_and_passages_shows_as_text(page, streamlit_app: RunningApp, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / MARKUP_NAME
    path.write_text(
        "Kestrels hover over the meadow at https://example.com/kestrels before they stoop on voles. "
        "Ring records are kept at www.example.org and reports go to warden@example.net each spring. " * 3,
        encoding="utf-8",
    )
    name = _literal(MARKUP_NAME)

    # Upload: live progress and the job's summary (the uploader itself shortens a long name: "[x](mai…b>bold.txt")
    page.goto(f"{streamlit_app.url}/upload")
    page.wait_for_selector("input[type=file]", state="attached")
    page.set_input_files("input[type=file]", [str(path)])
    page.get_by_text(re.compile(r"b>bold\.txt$")).first.wait_for()
    page.get_by_role("button", name="Index files").click()
    page.get_by_text(re.compile(r"Indexed \(1\): " + name.pattern)).wait_for(timeout=240_000)
    _assert_shown_as_text(page, MARKUP_NAME)

    # Documents: the picker lists it by name
    page.get_by_role("link", name="Documents", exact=True).click()
    page.get_by_placeholder("Choose documents to re-index or delete").click()
    page.get_by_role("option", name=MARKUP_NAME).wait_for()
    _assert_shown_as_text(page, MARKUP_NAME)
    page.keyboard.press("Escape")

    # Chat: the answer, the sources line, the source buttons, the sources expander
    _ask_in_chat(page, "Where do kestrels hover before they stoop on voles?")
    page.get_by_text(re.compile(r"Sources: \[1\] " + name.pattern)).last.wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"^Sources \(\d+\)$")).last.click()
    page.get_by_text("Kestrels hover over the meadow", exact=False).first.wait_for()
    _assert_shown_as_text(page, MARKUP_NAME, "https://example.com/kestrels", "www.example.org", "warden@example.net")

    # The source viewer: its heading and download button; the passage in the document's text (an escaped frame)
    # (the button shortens a long name for display: "[1] [x](mailto:a@b.c)….txt, part 1 of 1")
    page.get_by_role("button", name=re.compile(r"^\[1\] " + _literal("[x](mailto:a@b.c)").pattern)).last.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name=re.compile("^Download " + name.pattern)).wait_for()
    text = dialog.frame_locator("iframe")
    text.get_by_text("reports go to warden@example.net", exact=False).first.wait_for()
    assert text.locator("a, b, img").count() == 0
    _assert_shown_as_text(page, f"Download {MARKUP_NAME}")
    page.keyboard.press("Escape")

    # A workspace name: the message after creating it, and the Upload page's caption naming it
    page.get_by_role("link", name="Workspaces", exact=True).click()
    page.get_by_role("textbox", name="Name", exact=True).fill(MARKUP_WORKSPACE)
    page.get_by_role("button", name="Create").click()
    page.get_by_text(re.compile("Created " + _literal(MARKUP_WORKSPACE).pattern)).wait_for()
    _assert_shown_as_text(page, f"Created {MARKUP_WORKSPACE}.")
    page.get_by_role("link", name="Upload", exact=True).click()
    page.get_by_text(re.compile("into the workspace " + _literal(MARKUP_WORKSPACE).pattern)).wait_for()
    _assert_shown_as_text(page, MARKUP_WORKSPACE)
