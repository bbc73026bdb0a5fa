"""The optional access password (APP_PASSWORD). Teams wanting single sign-on use Streamlit's OIDC login (README)."""

from __future__ import annotations

import hmac

import streamlit as st

from rag import RagError, load_settings

UNLOCKED = "auth.unlocked"


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
    with st.form("auth.form"):
        given = st.text_input("Password", type="password", key="auth.password")
        submitted = st.form_submit_button("Enter")
    if submitted:
        if hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
            st.session_state[UNLOCKED] = True
            st.session_state.pop("auth.password", None)
            st.rerun()
        st.error("Wrong password.")
    st.stop()
