"""Deep links in a real browser: each page opened by its URL in a fresh browser, first thing after a start.

Streamlit runs the first requests of a server whose entrypoint sits next to a `pages/` folder in its old
folder mode, where a deep link runs the page file alone (ui/navigation.py explains it and the fix). Each
page must still come up under app.py's router: its own heading, the app's sidebar and tab title, no
"Page not found".
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS, RunningApp, app_environment, serve, sidebar_labels
from tests.conftest import MODEL_CACHE
from ui.navigation import PAGES, PageSpec

pytestmark = [pytest.mark.browser]

HEADINGS = {
    "home": "Ask your documents",
    "upload": "Upload documents",
    "documents": "Documents",
    "workspaces": "Workspaces",
    "chat": "Chat",
    "benchmarks": "Benchmarks",
    "evaluate": "Evaluate retrieval",
    "settings": "Settings",
}
OPEN_PAGES = [spec for spec in PAGES if not spec.admin_only]  # without accounts there are no admins' pages
SIDEBAR = [spec.title for spec in OPEN_PAGES]


def _url(base: str, spec: PageSpec) -> str:
    return f"{base}/" if spec.default else f"{base}/{spec.url_path}"


def _dom_facts(page) -> dict[str, object]:  # noqa: ANN001
    """What the page's DOM holds where the check looks, for a failure's message (CI keeps no files)."""
    return page.evaluate(
        """() => ({
            url: location.href,
            mains: [...document.querySelectorAll("main")].map((m) => m.getAttribute("data-testid")),
            stMain: document.querySelectorAll("[data-testid=stMain]").length,
            stHeading: document.querySelectorAll("[data-testid=stHeading]").length,
            h1: [...document.querySelectorAll("h1")].map((h) => [
                h.innerText, h.closest("[data-testid]")?.dataset.testid,
            ]),
            mainStart: (document.querySelector("main")?.outerHTML || "").slice(0, 600),
        })"""
    )


def _open_and_check(chromium, base: str, spec: PageSpec) -> None:  # noqa: ANN001
    """Open the page's URL in a fresh browser context and check it is that page, under app.py's router."""
    context = chromium.new_context(viewport={"width": 1300, "height": 950})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(_url(base, spec))
        # The main area's level-1 heading, found as a user's screen reader finds it: a page's sidebar may carry
        # headings of its own (Chat's "Answer settings"), and Streamlit's <main> is not always `stMain`: on a
        # page with a chat input it is often `stAppScrollToBottomContainer` (a test-id lookup failed CI twice).
        # A web-first assertion, retried until it holds: the page may rerun (and redraw) while it loads.
        heading = page.get_by_role("main").get_by_role("heading", level=1).first
        expected = HEADINGS[spec.url_path]
        try:
            expect(heading).to_have_text(expected, use_inner_text=True, timeout=60_000)
        except AssertionError:
            dom = _dom_facts(page)
            ARTIFACTS.mkdir(exist_ok=True)  # what the browser showed, for the next reader of a CI log
            page.screenshot(path=str(ARTIFACTS / f"deep-link-{spec.url_path}.png"), full_page=True)
            (ARTIFACTS / f"deep-link-{spec.url_path}.html").write_text(page.content(), encoding="utf-8")
            assert heading.count() == 0, (spec.url_path, "another page's heading: the routing is wrong", dom)
            # No heading after a minute: said out loud with what the DOM held, then the page must come up,
            # rightly routed, on a reload.
            warnings.warn(f"/{spec.url_path}: no heading in 60 s; reloaded. DOM: {dom}", stacklevel=1)
            page.reload()
            try:
                expect(heading).to_have_text(expected, use_inner_text=True, timeout=60_000)
            except AssertionError as error:
                raise AssertionError(f"/{spec.url_path} after a reload; DOM: {_dom_facts(page)}") from error
        nav = page.get_by_test_id("stSidebarNav")
        with contextlib.suppress(PlaywrightTimeoutError):  # a folder-built sidebar never shows it: the assert says so
            nav.get_by_role("link", name=SIDEBAR[-1], exact=True).wait_for(timeout=15_000)
        links = sidebar_labels(page)

        assert links == SIDEBAR, (spec.url_path, links)  # app.py's navigation, not one built from the folder
        assert page.title() == "Ask your documents", (spec.url_path, page.title())  # app.py's page config ran
        assert page.get_by_text("Page not found").count() == 0, spec.url_path
        path = page.url.split("?", 1)[0].removeprefix(base).strip("/")
        assert path == ("" if spec.default else spec.url_path), page.url
        assert "sid=" in page.url  # app.py gave the session its id
    finally:
        context.close()


@pytest.mark.parametrize("spec", OPEN_PAGES, ids=lambda spec: spec.url_path)
def test_each_page_as_the_first_request_of_a_fresh_server(chromium, spec: PageSpec, tmp_path: Path) -> None:  # noqa: ANN001
    # Each page draws its heading before it needs the engine, so this server gets a Milvus address where
    # nothing listens: the routing is under test, not the engine (and no collection is left behind).
    env = app_environment(
        MILVUS_URI="http://127.0.0.1:9",
        RAG_DATA_DIR=str(tmp_path / "data"),
        RAG_EMBED_CACHE_DIR=str(MODEL_CACHE),
    )
    with serve(env, tmp_path / "streamlit.log") as url:
        _open_and_check(chromium, url, spec)


@pytest.mark.milvus
def test_every_page_by_its_url_right_after_a_start_and_later(chromium, streamlit_app: RunningApp) -> None:  # noqa: ANN001
    first = next(spec for spec in OPEN_PAGES if spec.url_path == "chat")  # the server's first request
    for spec in [first, *(s for s in OPEN_PAGES if s is not first)]:
        _open_and_check(chromium, streamlit_app.url, spec)
    for spec in OPEN_PAGES:  # later: the process has long left Streamlit's folder mode
        _open_and_check(chromium, streamlit_app.url, spec)
