"""Workspaces: create, rename and delete the named sets of documents that keep topics (and people) apart."""

import streamlit as st

from rag import RagError
from ui.auth import current_account, is_admin
from ui.errors import service_or_stop, show_error
from ui.format import md
from ui.navigation import ensure_routed
from ui.workspaces import KEY, choose, current_workspace

ensure_routed()

st.title("Workspaces")
service = service_or_stop()
account, admin = current_account(), is_admin()
current_workspace(service)
if flash := st.session_state.pop("workspaces.flash", None):
    st.success(flash, icon=":material/check_circle:")
st.caption(
    "Each workspace has its own documents and chats; a question searches one workspace only. "
    + (
        "Shared workspaces are seen by everyone signed in; a private one by its owner alone."
        if account
        else "Without accounts every workspace is shared with everyone who can open this app."
    )
)

workspaces = service.list_workspaces(account)
st.dataframe(
    [
        {
            "workspace": w.name,
            "documents": len(service.documents(w.id)),
            "visible to": "everyone" if w.shared else f"{w.owner} only",
        }
        for w in workspaces
    ],
    hide_index=True,
    width="stretch",
)

with st.form("workspaces.create", clear_on_submit=True):
    st.subheader("New workspace")
    name = st.text_input("Name", max_chars=64, key="workspaces.new_name")
    shared = st.checkbox(
        "Shared with everyone",
        value=account is None or admin,
        disabled=account is None or not admin,
        help="Only admins create shared workspaces; yours are private to you." if account else None,
        key="workspaces.shared",
    )
    if st.form_submit_button("Create", icon=":material/add:"):
        try:
            created = service.create_workspace(name, owner=account, shared=shared or account is None)
        except RagError as err:
            show_error(err)
        else:
            choose(created.id)
            st.session_state["workspaces.flash"] = f"Created {md(created.label)}."
            st.rerun()

manageable = [w for w in workspaces if w.managed_by(account, admin)]
if manageable:
    st.subheader("Rename or delete")
    by_id = {w.id: w for w in manageable}
    chosen = by_id[st.selectbox("Workspace", list(by_id), format_func=lambda i: by_id[i].label, key="workspaces.pick")]
    new_name = st.text_input("New name", value=chosen.name, max_chars=64, key=f"workspaces.rename.{chosen.id}")
    rename_col, delete_col = st.columns(2)
    if rename_col.button("Rename", key="workspaces.rename", icon=":material/edit:"):
        try:
            renamed = service.rename_workspace(chosen.id, new_name, account, admin)
        except RagError as err:
            show_error(err)
        else:
            st.session_state["workspaces.flash"] = f"Renamed to {md(renamed.label)}."
            st.rerun()
    if delete_col.button("Delete…", key="workspaces.delete", icon=":material/delete:", disabled=chosen.id == "default"):
        st.session_state["workspaces.pending_delete"] = chosen.id
    if st.session_state.get("workspaces.pending_delete") == chosen.id:
        count = len(service.documents(chosen.id))
        st.warning(
            f"Delete {md(chosen.label)} with its {count} document(s), their chunks and every chat in it? "
            "Uploads still indexing into it are cancelled first. This cannot be undone."
        )
        yes, no = st.columns(2)
        if yes.button("Yes, delete", key="workspaces.confirm_delete", type="primary"):
            st.session_state.pop("workspaces.pending_delete", None)
            try:
                with st.spinner("Deleting…"):
                    removed = service.delete_workspace(chosen.id, account, admin)
            except RagError as err:
                show_error(err)
            else:
                if st.session_state.get(KEY) == chosen.id:
                    choose(None)
                st.session_state["workspaces.flash"] = f"Deleted {md(chosen.label)} and {len(removed)} document(s)."
                st.rerun()
        if no.button("Cancel", key="workspaces.cancel_delete"):
            st.session_state.pop("workspaces.pending_delete", None)
            st.rerun()
