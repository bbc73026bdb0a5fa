"""A first visit without an LLM, in headless Chromium: the two tour questions, a follow-up, and sources to read.

The app here has no language model (the embedded default of a fresh clone), so answers are retrieval-only.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.milvus_server import EmbeddedMilvus
from tests.browser.conftest import RunningApp, _drop, milvus_app_environment, serve
from tests.browser.test_e2e import _ask

pytestmark = [pytest.mark.browser, pytest.mark.milvus]

AD_QUESTION = "How many airplanes does the proposed AD affect?"
ESSAY_QUESTION = "What did the author work on before college?"


@pytest.fixture(scope="module")
def streamlit_app(tmp_path_factory: pytest.TempPathFactory, milvus_server: EmbeddedMilvus) -> Iterator[RunningApp]:
    """The app as a fresh clone runs it: no OPENAI_* settings, so retrieval-only answers."""
    state = milvus_server.start()
    work = tmp_path_factory.mktemp("first-visit")
    collection = f"t_{uuid.uuid4().hex[:12]}"
    env = milvus_app_environment(state.uri, milvus_server.token, work / "data", collection)
    log = work / "streamlit.log"
    try:
        with serve(env, log) as url:
            yield RunningApp(url=url, log=log, collection=collection)
    finally:
        _drop(state.uri, milvus_server.token, collection)


def _upload(page, app: RunningApp, *files: Path) -> None:  # noqa: ANN001
    """Drop files on the Upload page and index them (the uploader shortens long names: wait for their ends)."""
    page.goto(f"{app.url}/upload")
    page.wait_for_selector("input[type=file]", state="attached")
    page.set_input_files("input[type=file]", [str(f) for f in files])
    for f in files:
        page.get_by_text(f.name[-9:], exact=False).first.wait_for()  # the upload reached the server
    page.get_by_role("button", name="Index files").click()


def _last_answer(page):  # noqa: ANN001, ANN202
    return page.get_by_test_id("stChatMessage").last


def test_the_tour_questions_quote_the_evidence_and_sources_read_well(
    page,  # noqa: ANN001
    streamlit_app: RunningApp,
    corpus: Path,
) -> None:
    _upload(page, streamlit_app, corpus / "federal-register-2020-17221.pdf", corpus / "paul_graham_essay.txt")
    page.get_by_text(re.compile(r"Indexed \(2\)")).wait_for(timeout=300_000)
    page.get_by_role("link", name="Chat", exact=True).click()
    page.get_by_placeholder("Ask a question about your documents").wait_for()

    # The AD question: the quoted sentence is whole, up to "…of U.S. registry."
    _ask(page, AD_QUESTION)
    page.get_by_text(re.compile(r"73 airplanes of U\.S\. registry\.")).first.wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"^Sources \(\d+\)$")).last.wait_for()
    buttons = page.get_by_role("button", name=re.compile(r"^\[\d+\] "))
    buttons.first.wait_for()  # the expander's label can arrive a render before its buttons
    labels = [b.inner_text() for b in buttons.all()]
    assert labels and all(re.search(r"p\. \d", label) for label in labels), labels

    # A follow-up without an LLM: the previous question and its document carry over.
    _ask(page, "and what did it cost per operator?")
    page.get_by_text("$7,650", exact=False).first.wait_for(timeout=120_000)
    assert "$7,650" in _last_answer(page).inner_text()

    # A text file: sources tell their parts apart, and the viewer shows text with the passage marked.
    _ask(page, ESSAY_QUESTION)
    essay = page.get_by_role("button", name=re.compile(r"^\[1\] paul_graham_essay\.txt, part \d+ of \d+"))
    essay.last.wait_for(timeout=120_000)
    essay.last.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("The passage is highlighted in the document's text.").wait_for()
    frame = dialog.frame_locator("iframe").first
    mark = frame.locator("mark#passage")
    mark.wait_for()
    passage = mark.inner_text().strip()
    body = frame.locator("body").inner_text()
    assert passage and len(body) > len(passage)  # the passage inside the document's text around it
    assert "**" not in body and "**" not in frame.locator("body").inner_html()  # text, not raw Markdown
