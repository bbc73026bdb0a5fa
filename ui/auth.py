"""Who is using the app: accounts (once one exists), else the optional APP_PASSWORD, else anyone.

Every page checks this itself (`ensure_routed` calls `require_login` on every run, deep links included).
Both gates go through the engine's one sign-in limiter (`Accounts.login`, `Accounts.enter_app_password`):
waits that grow with each failure, per client address and per name, shared by every app process.
A signed-in session keeps its account's id and session epoch; each run checks both, so a removed account,
or one whose password was changed or reset, is signed out at its next page run. Signing out clears the
whole browser session (chat choices, evaluation reports, everything) and starts a new session id.
Teams wanting single sign-on use Streamlit's OIDC login (README).
"""

from __future__ import annotations

import secrets

import streamlit as st

from rag import Account, Accounts, Caller, RagError, Settings, load_settings
from ui.format import md
from ui.state import SID, session_id

UNLOCKED = "auth.unlocked"
USER = "auth.user"
"""Session-state key of the signed-in account's id."""
EPOCH = "auth.epoch"
"""Session-state key of the signed-in account's session epoch when it signed in."""
ACCOUNT = "auth.account"
"""Session-state key of the signed-in account as checked in this run."""

FORM_WIDTH = 420  # pixels: a sign-in form of normal width, not the whole page


@st.cache_resource(show_spinner=False, on_release=lambda accounts: accounts.close())
def _open_accounts(data_dir: str, database_url: str) -> Accounts:
    return Accounts.from_settings(load_settings(data_dir=data_dir, database_url=database_url))


def get_accounts(settings: Settings) -> Accounts:
    """The accounts of the settings' database, opened once per process: every run of every page checks them
    (Accounts is safe to share between threads; other processes' changes show through the database)."""
    return _open_accounts(str(settings.data_dir), settings.database_url)


def _client() -> str | None:
    address = st.context.ip_address
    return address if isinstance(address, str) else None


def _session_account(accounts: Accounts) -> Account | None:
    """The signed-in account, if it still exists with the session epoch it signed in with."""
    account_id = st.session_state.get(USER)
    if account_id is None:
        return None
    account = accounts.get_by_id(account_id)
    if account is None or account.session_epoch != st.session_state.get(EPOCH):
        return None
    return account


def signed_in() -> bool:
    """Whether this session may see pages already (no sign-in or password form to show first)."""
    try:
        settings = load_settings()
        accounts = get_accounts(settings)
    except RagError:
        return False
    if accounts.any():
        return _session_account(accounts) is not None
    secret = settings.app_password
    return secret is None or not secret.get_secret_value() or bool(st.session_state.get(UNLOCKED))


def require_login() -> None:
    """Stop the page until this browser session is allowed in: signed in when accounts exist, else past
    APP_PASSWORD when it is set."""
    try:
        accounts = get_accounts(load_settings())
    except RagError as exc:
        st.error(exc.user_message)
        st.stop()
    if not accounts.any():
        st.session_state.pop(USER, None)
        st.session_state.pop(ACCOUNT, None)
        require_password()
        return
    account = _session_account(accounts)
    if account is not None:
        st.session_state[ACCOUNT] = account
        _sign_out_button(account.name)
        return
    if st.session_state.get(USER) is not None:  # removed, or its password changed: nothing of it stays
        sign_out()
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
            account = accounts.login(name, password, _client())
        except RagError as exc:
            st.error(exc.user_message)  # the same words for an unknown name and a wrong password
            return
        st.session_state.pop("auth.password", None)
        st.session_state[USER], st.session_state[EPOCH] = account.id, account.session_epoch
        st.rerun()


def sign_out() -> None:
    """Forget everything this browser session held (who it was, its choices, its reports) and start a new
    session id, so nothing of the previous user reaches the next one."""
    st.session_state.clear()
    st.query_params[SID] = secrets.token_urlsafe(16)
    session_id()


def _sign_out_button(name: str) -> None:
    with st.sidebar:
        st.caption(f"Signed in as **{md(name)}**")
        if st.button("Sign out", key="auth.sign_out", icon=":material/logout:"):
            sign_out()
            st.rerun()


def current_account() -> Account | None:
    """The signed-in account as checked in this run (None when accounts are off)."""
    return st.session_state.get(ACCOUNT) if st.session_state.get(USER) else None


def current_caller() -> Caller:
    """Who this session is, for the engine's rules: the signed-in account, or anyone while there are none."""
    account = current_account()
    return Caller.of(account) if account is not None else Caller.anonymous()


def is_admin() -> bool:
    """Whether the signed-in account is an admin (False when accounts are off)."""
    account = current_account()
    return bool(account and account.admin)


def owner_id() -> str:
    """Whose jobs and conversations these are: the account (by id) when signed in, else this browser session."""
    return current_caller().conversation_key or session_id()


def require_password() -> None:
    """Stop the page until this browser session has given APP_PASSWORD; do nothing when it is unset."""
    try:
        settings = load_settings()
    except RagError as exc:
        st.error(exc.user_message)
        st.stop()
    secret = settings.app_password
    if secret is None or not secret.get_secret_value() or st.session_state.get(UNLOCKED):
        return
    st.title("Ask your documents")
    with st.form("auth.form", width=FORM_WIDTH):
        given = st.text_input("Password", type="password", key="auth.password")
        submitted = st.form_submit_button("Enter")
    if submitted:
        try:
            get_accounts(settings).enter_app_password(given, secret, _client())
        except RagError as exc:
            st.error(exc.user_message)
        else:
            st.session_state[UNLOCKED] = True
            st.session_state.pop("auth.password", None)
            st.rerun()
    st.stop()
