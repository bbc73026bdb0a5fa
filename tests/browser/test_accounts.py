"""Two accounts in headless Chromium: a private workspace and its chats stay its owner's; a shared one is both's.

The documents are indexed through the engine before the server starts (what this test is about is who sees
what, not uploading); everything after that happens in the browser.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from rag.access import Caller
from rag.accounts import Accounts
from rag.config import load_settings
from rag.embeddings import Embedder
from rag.milvus_server import EmbeddedMilvus
from rag.service import RagService
from tests.browser.conftest import ARTIFACTS, MODEL_CACHE, _drop, milvus_app_environment, serve, sidebar_labels

pytestmark = [pytest.mark.browser, pytest.mark.milvus]

SECRET = "The launch code word of Project Heron is MARMALADE-7. " * 8
SHARED = "The cafeteria serves lentil soup every Thursday in winter. " * 8
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22"}


@pytest.fixture(scope="module")
def accounts_app(
    tmp_path_factory: pytest.TempPathFactory, milvus_server: EmbeddedMilvus, embedder: Embedder
) -> Iterator[str]:
    """An app with accounts alice (admin) and bob: alice's private workspace holds secret.txt, `default`
    (shared) holds cafeteria.txt."""
    state = milvus_server.start()
    work = tmp_path_factory.mktemp("accounts")
    collection = f"t_{uuid.uuid4().hex[:12]}"
    settings = load_settings(
        data_dir=work / "data",
        milvus_uri=state.uri,
        milvus_token=milvus_server.token,
        collection=collection,
        consistency_level="Strong",
        embed_cache_dir=MODEL_CACHE,
    )
    accounts = Accounts.from_settings(settings)
    alice = accounts.add("alice", PASSWORDS["alice"], admin=True)
    accounts.add("bob", PASSWORDS["bob"])
    accounts.close()
    (work / "secret.txt").write_text(SECRET)
    (work / "cafeteria.txt").write_text(SHARED)
    service = RagService(settings, embedder=embedder)
    try:
        private = service.private_workspace(Caller.of(alice))
        assert service.ingest([work / "secret.txt"], workspace=private.id).files[0].status == "indexed"
        assert service.ingest([work / "cafeteria.txt"]).files[0].status == "indexed"
    finally:
        service.close()
    env = milvus_app_environment(state.uri, milvus_server.token, work / "data", collection)
    try:
        with serve(env, work / "streamlit.log") as url:
            yield url
    finally:
        _drop(state.uri, milvus_server.token, collection)


def _sign_in(page, url: str, name: str, password: str) -> None:  # noqa: ANN001
    page.goto(f"{url}/chat")  # a deep link: the page asks for a sign-in itself
    page.get_by_role("textbox", name="Name").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def _nav(page) -> list[str]:  # noqa: ANN001
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Home").wait_for()
    return sidebar_labels(page)


def _open(page, title: str) -> None:  # noqa: ANN001
    """Go to a page through the sidebar (a new URL would be a new, signed-out browser session)."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title, exact=True).click()


def _choose_workspace(page, label: str) -> None:  # noqa: ANN001
    page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").first.click()
    page.get_by_role("option", name=label, exact=True).click()


def _workspace_options(page) -> list[str]:  # noqa: ANN001
    page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").first.click()
    options = [o.inner_text().strip() for o in page.get_by_role("option").all()]
    page.keyboard.press("Escape")
    return options


def _ask(page, question: str) -> str:  # noqa: ANN001
    box = page.get_by_placeholder("Ask a question about your documents")
    box.fill(question)
    box.press("Enter")
    caption = page.get_by_text(re.compile(r"^Sources: ")).last
    caption.wait_for(timeout=120_000)
    return caption.inner_text()


def test_a_private_workspace_and_its_chats_stay_with_their_owner(chromium, accounts_app: str) -> None:  # noqa: ANN001
    alice_ctx, bob_ctx = chromium.new_context(), chromium.new_context()
    try:
        alice, bob = alice_ctx.new_page(), bob_ctx.new_page()
        for p in (alice, bob):
            p.set_default_timeout(60_000)

        # A wrong password and an unknown name read the same.
        _sign_in(bob, accounts_app, "bob", "not-the-password")
        wrong = bob.get_by_text(re.compile("Wrong name or password|Too many failed")).first
        wrong.wait_for()
        _sign_in(bob, accounts_app, "nobody-here", "whatever-password")
        bob.get_by_text(wrong.inner_text()).first.wait_for()

        # Both browsers come from 127.0.0.1, and bob's two failures made that address wait 1 s, then 2 s.
        alice.wait_for_timeout(2500)
        _sign_in(alice, accounts_app, "alice", PASSWORDS["alice"])
        alice.get_by_text("Signed in as").first.wait_for()
        assert "Accounts" in _nav(alice)  # an admin's page list
        _open(alice, "Chat")
        assert {"default", "alice (private)"} <= set(_workspace_options(alice))
        _choose_workspace(alice, "alice (private)")
        sources = _ask(alice, "What is the launch code word of Project Heron?")
        assert "secret.txt" in sources

        bob.wait_for_timeout(1500)  # past the one-second wait the failed sign-ins earned
        _sign_in(bob, accounts_app, "bob", PASSWORDS["bob"])
        bob.get_by_text("Signed in as").first.wait_for()
        assert "Accounts" not in _nav(bob)
        _open(bob, "Chat")
        options = _workspace_options(bob)
        assert "default" in options and "bob (private)" in options and not any("alice" in o for o in options)
        # bob cannot search alice's documents: in the shared workspace the question finds only shared text
        sources = _ask(bob, "What is the launch code word of Project Heron?")
        assert "secret.txt" not in sources and "cafeteria.txt" in sources
        # ...nor read her chat
        body = bob.inner_text("body")
        assert body.count("launch code word") == 1  # bob's own question only
        _open(bob, "Documents")
        bob.get_by_text("cafeteria.txt").first.wait_for(state="attached")  # a cell of the documents table
        assert "secret.txt" not in bob.content()
        _open(bob, "Workspaces")
        bob.get_by_role("heading", name="Workspaces").wait_for()
        bob.get_by_text("you only").first.wait_for(state="attached")  # a cell of the workspaces table
        assert "alice" not in bob.content()
        bob.goto(f"{accounts_app}/chat")  # a new browser session (a reload) must sign in again
        bob.get_by_role("button", name="Sign in").wait_for()
        assert not bob.get_by_test_id("stSidebarNav").count()  # and no page list is shown before it
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        for name, p in (("alice", alice), ("bob", bob)):
            p.screenshot(path=str(ARTIFACTS / f"accounts-{name}.png"), full_page=True)
        raise
    finally:
        alice_ctx.close()
        bob_ctx.close()
