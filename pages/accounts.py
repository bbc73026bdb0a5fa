"""Accounts (admins only): who may sign in, who manages shared workspaces, and what becomes of a removed
account's private documents."""

import streamlit as st

from rag import RagError
from ui.auth import current_account, current_caller, get_accounts, is_admin
from ui.errors import service_or_stop, show_error
from ui.format import md
from ui.navigation import ensure_routed

ensure_routed()

st.title("Accounts")
if not is_admin():
    st.error("Only admins manage accounts.")
    st.stop()
service = service_or_stop()
accounts = get_accounts(service.settings)
me = current_account()
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

others = [a.name for a in accounts.list() if me is None or a.id != me.id]
if others:
    with st.form("accounts.reset", clear_on_submit=True):
        st.subheader("Reset a password")
        who = st.selectbox("Account", others, key="accounts.reset_name")
        new_password = st.text_input("New password", type="password", key="accounts.reset_password")
        if st.form_submit_button("Reset", icon=":material/key:"):
            try:
                accounts.set_password(who, new_password)
            except RagError as err:
                show_error(err)
            else:
                st.session_state["accounts.flash"] = f"New password set for {md(who)}; their sessions have ended."
                st.rerun()

    st.subheader("Remove an account")
    gone = st.selectbox("Account", others, key="accounts.remove_name")
    held = accounts.private_documents(gone)
    heirs = [a.name for a in accounts.list() if a.admin and a.name != gone]
    choice, heir = "refuse", None
    if held:
        choice = st.radio(
            f"{md(gone)} has {held} document(s) in private workspaces. What becomes of them?",
            ["delete", "hand-over"],
            format_func=lambda c: "Delete them (chunks, files and chats)" if c == "delete" else "Hand them to an admin",
            key="accounts.documents",
        )
        if choice == "hand-over":
            heir = st.selectbox("Admin who receives them", heirs, key="accounts.heir")
    if st.button("Remove", key="accounts.remove", icon=":material/person_remove:"):
        try:
            with st.spinner("Removing…"):
                service.remove_account(gone, documents=choice, hand_to=heir, caller=current_caller())
        except RagError as err:
            show_error(err)
        else:
            st.session_state["accounts.flash"] = f"Removed {md(gone)}." + (
                f" Their private documents went to {md(heir)}." if heir else ""
            )
            st.rerun()
