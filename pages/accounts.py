"""Accounts (admins only): who may sign in, and who manages shared workspaces."""

import streamlit as st

from rag import RagError
from ui.auth import current_account, get_accounts, is_admin
from ui.errors import show_error
from ui.format import md
from ui.navigation import ensure_routed
from ui.resources import get_service

ensure_routed()

st.title("Accounts")
if not is_admin():
    st.error("Only admins manage accounts.")
    st.stop()
accounts = get_accounts(get_service().settings.data_dir)
if flash := st.session_state.pop("accounts.flash", None):
    st.success(flash, icon=":material/check_circle:")
st.dataframe(
    [{"name": a.name, "admin": a.admin, "created": a.created} for a in accounts.list()],
    hide_index=True,
    width="stretch",
)
with st.form("accounts.add", clear_on_submit=True):
    st.subheader("Add an account")
    name = st.text_input("Name", key="accounts.name")
    password = st.text_input("Password (8 characters or more)", type="password", key="accounts.password")
    admin = st.checkbox("Admin", key="accounts.admin")
    if st.form_submit_button("Add", icon=":material/person_add:"):
        try:
            added = accounts.add(name, password, admin=admin)
        except RagError as err:
            show_error(err)
        else:
            st.session_state["accounts.flash"] = f"Added {md(added.name)}."
            st.rerun()
others = [a.name for a in accounts.list() if a.name != current_account()]
if others:
    st.subheader("Remove an account")
    gone = st.selectbox("Account", others, key="accounts.remove_name")
    if st.button("Remove", key="accounts.remove", icon=":material/person_remove:"):
        try:
            accounts.remove(gone)
        except RagError as err:
            show_error(err)
        else:
            st.session_state["accounts.flash"] = f"Removed {md(gone)}; their private workspace stays on disk."
            st.rerun()
