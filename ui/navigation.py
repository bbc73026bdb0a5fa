"""The app's pages and its one router: app.py runs `run_app()`, and every page calls `ensure_routed()` first.

Why pages take part in routing: Streamlit (1.67) decides per process whether an app is an old-style
multipage app. The first session to start sees the `pages/` folder next to app.py and marks the app as
one, and only a run of `st.navigation` clears the mark. Until then each script run skips app.py and
builds a navigation from the folder instead ("app" listed among the pages), running the page the URL
names on its own. So a deep link such as /chat opened as the server's first request would run
pages/chat.py without app.py: no page title, no password check, no session id, the folder's sidebar.
No setting changes this (`client.showSidebarNavigation` only hides the sidebar), and the `pages/`
folder stays because the product's design names it.

So a page that finds itself run outside app.py's router runs the router itself, with the public
`st.navigation` (which also ends the folder mode for the whole process), and then stops its own run:
the router runs the very page the URL names, and the request is served as app.py would serve it.
It is the nesting Streamlit itself does for a first request of /: the folder mode runs app.py as its
main page, and app.py's st.navigation takes over.
The URL paths are the page files' names, as the folder mode infers them, so both agree on the page.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from ui.auth import current_caller, is_admin, require_login, signed_in
from ui.state import keep_widget_values, session_id

APP_DIR = Path(__file__).resolve().parent.parent
"""Where app.py is: page files are named relative to it."""

_ROUTED: ContextVar[bool] = ContextVar("ui.navigation.routed", default=False)
"""True while app.py's router runs a page (in this script-run thread)."""


@dataclass(frozen=True)
class PageSpec:
    """One page of the app: its file under pages/, the title in the sidebar, its icon."""

    file: str
    title: str
    icon: str
    default: bool = False
    admin_only: bool = False
    """Shown only to a signed-in admin."""
    heavy: bool = False
    """Heavy or revealing: shown to admins once accounts exist (without accounts, to everyone)."""

    @property
    def url_path(self) -> str:
        """The page's URL path: its file's name, as Streamlit's folder mode names it too."""
        return Path(self.file).stem


PAGES = (
    PageSpec("pages/home.py", "Home", ":material/home:", default=True),
    PageSpec("pages/upload.py", "Upload", ":material/upload_file:"),
    PageSpec("pages/documents.py", "Documents", ":material/folder_open:"),
    PageSpec("pages/chat.py", "Chat", ":material/forum:"),
    PageSpec("pages/workspaces.py", "Workspaces", ":material/workspaces:"),
    PageSpec("pages/benchmarks.py", "Benchmarks", ":material/speed:", heavy=True),
    PageSpec("pages/evaluate.py", "Evaluate", ":material/fact_check:"),
    PageSpec("pages/settings.py", "Settings", ":material/settings:", heavy=True),
    PageSpec("pages/accounts.py", "Accounts", ":material/manage_accounts:", admin_only=True),
)
"""The sidebar's pages, in order; a page whose file is absent (a slim image without benchmarks) is left out."""


def run_app() -> None:
    """The whole app: page config, sign-in (or password), session id, then the page the URL names."""
    st.set_page_config(page_title="Ask your documents", page_icon=":material/forum:", layout="wide")
    if not signed_in():  # the form first, with no page list beside it (st.navigation still ends the folder mode)
        st.navigation(_pages(admin=False, open_app=True), position="hidden")  # the form blocks them all
        require_login()  # the form; a successful sign-in reruns
        st.stop()
    require_login()
    session_id()
    keep_widget_values()
    page = st.navigation(_pages(admin=is_admin(), open_app=current_caller().kind != "account"))
    token = _ROUTED.set(True)
    try:
        page.run()
    finally:
        _ROUTED.reset(token)


def _pages(admin: bool, open_app: bool) -> list[st.Page]:
    return [
        st.Page(spec.file, title=spec.title, icon=spec.icon, url_path=spec.url_path, default=spec.default)
        for spec in PAGES
        if (APP_DIR / spec.file).exists() and (admin or not spec.admin_only) and (admin or open_app or not spec.heavy)
    ]


def require_admin_when_accounts() -> None:
    """Stop a heavy or revealing page for a signed-in account that is not an admin (a deep link to it)."""
    if current_caller().kind == "account" and not is_admin():
        st.error("Only admins can open this page.", icon=":material/lock:")
        st.stop()


def ensure_routed() -> None:
    """Let a page run only under app.py's router: run outside it (see the module docstring), route and stop."""
    if _ROUTED.get():
        return
    run_app()
    st.stop()
