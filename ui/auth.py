"""Who is using the app: accounts (once one exists), else the optional APP_PASSWORD, else anyone.

Every page checks this itself (`ensure_routed` calls `require_login` on every run, deep links included).
Teams wanting single sign-on use Streamlit's OIDC login (README).
"""

from __future__ import annotations

import hmac
from pathlib import Path

import streamlit as st

from rag import Accounts, RagError, load_settings
from ui.state import session_id

UNLOCKED = "auth.unlocked"
USER = "auth.user"
"""Session-state key of the signed-in account's name."""
ADMIN = "auth.admin"

FORM_WIDTH = 420  # pixels: a sign-in form of normal width, not the whole page


@st.cache_resource(show_spinner=False, on_release=lambda accounts: accounts.close())
def _open_accounts(data_dir: str) -> Accounts:
    return Accounts.in_data_dir(data_dir)


def get_accounts(data_dir: Path | str) -> Accounts:
    """The accounts database of a data dir, opened once per process: every run of every page checks it
    (Accounts is safe to share between threads; other processes' changes show through SQLite)."""
    return _open_accounts(str(data_dir))


def signed_in() -> bool:
    """Whether this session may see pages already (no sign-in or password form to show first)."""
    try:
        settings = load_settings()
        accounts = get_accounts(settings.data_dir)
    except RagError:
        return False
    if accounts.any():
        return st.session_state.get(USER) is not None and accounts.get(st.session_state[USER]) is not None
    secret = settings.app_password
    return secret is None or not secret.get_secret_value() or bool(st.session_state.get(UNLOCKED))


def require_login() -> None:
    """Stop the page until this browser session is allowed in: signed in when accounts exist, else past
    APP_PASSWORD when it is set."""
    try:
        accounts = get_accounts(load_settings().data_dir)
    except RagError as exc:
        st.error(exc.user_message)
        st.stop()
    if not accounts.any():
        st.session_state.pop(USER, None)
        require_password()
        return
    name = st.session_state.get(USER)
    if name is not None:
        account = accounts.get(name)
        if account is not None:  # still exists (an admin may have removed it meanwhile)
            st.session_state[ADMIN] = account.admin
            _sign_out_button(account.name)
            return
        st.session_state.pop(USER, None)
    _login_form(accounts)
    st.stop()


def _login_form(accounts: Accounts) -> None:
    st.title("Ask your documents")
    with st.form("auth.login", width=FORM_WIDTH):
        name = st.text_input("Name", key="auth.name")
        password = st.text_input("Password", type="password", key="auth.password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        try:
            address = st.context.ip_address
            account = accounts.login(name, password, address if isinstance(address, str) else None)
        except RagError as exc:
            st.error(exc.user_message)  # the same words for an unknown name and a wrong password
            return
        st.session_state.pop("auth.password", None)
        st.session_state[USER], st.session_state[ADMIN] = account.name, account.admin
        st.rerun()


def _sign_out_button(name: str) -> None:
    with st.sidebar:
        st.caption(f"Signed in as **{name}**")
        if st.button("Sign out", key="auth.sign_out", icon=":material/logout:"):
            for key in (USER, ADMIN, "workspace.id"):
                st.session_state.pop(key, None)
            st.rerun()


def current_account() -> str | None:
    """The signed-in account's name (None when accounts are off)."""
    return st.session_state.get(USER)


def is_admin() -> bool:
    """Whether the signed-in account is an admin (False when accounts are off)."""
    return bool(st.session_state.get(ADMIN))


def owner_id() -> str:
    """Whose jobs and conversations these are: the account when signed in, else this browser session."""
    account = current_account()
    return f"user:{account}" if account else session_id()


def require_password() -> None:
    """Stop the page until this browser session has given APP_PASSWORD; do nothing when it is unset."""
    try:
        secret = load_settings().app_password
    except RagError as exc:
        st.error(exc.user_message)
        st.stop()
    if secret is None or not secret.get_secret_value() or st.session_state.get(UNLOCKED):
        return
    st.title("Ask your documents")
    with st.form("auth.form", width=FORM_WIDTH):
        given = st.text_input("Password", type="password", key="auth.password")
        submitted = st.form_submit_button("Enter")
    if submitted:
        if hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
            st.session_state[UNLOCKED] = True
            st.session_state.pop("auth.password", None)
            st.rerun()
        st.error("Wrong password.")
    st.stop()
