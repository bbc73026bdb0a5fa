"""Workspaces: create, rename and delete the named sets of documents that keep topics (and people) apart, and
see (admins: set) who may do what in each."""

import streamlit as st

from rag import ROLES, RagError
from ui.auth import current_caller, get_accounts
from ui.errors import service_or_stop, show_error
from ui.format import md
from ui.navigation import ensure_routed
from ui.workspaces import KEY, choose, current_workspace

ensure_routed()

_ROLE_HELP = {
    "viewer": "ask and read sources",
    "editor": "also upload, re-index and delete their own documents",
    "owner": "also re-index and delete anyone's documents, rename",
}
_NOBODY = "members only"

st.title("Workspaces")
service = service_or_stop()
caller = current_caller()
accounts_on = caller.kind == "account"
current_workspace(service)
if flash := st.session_state.pop("workspaces.flash", None):
    st.success(flash, icon=":material/check_circle:")
st.caption(
    "Each workspace has its own documents and chats; a question searches one workspace only. "
    + (
        "Roles: a viewer may "
        + _ROLE_HELP["viewer"]
        + "; an editor "
        + _ROLE_HELP["editor"]
        + "; an owner "
        + _ROLE_HELP["owner"]
        + ". Admins manage shared workspaces and roles; a private workspace is its owner's alone."
        if accounts_on
        else "Without accounts every workspace is shared with everyone who can open this app."
    )
)


def _who(workspace) -> str:  # noqa: ANN001 - a rag.Workspace
    if not workspace.shared:
        return "you only"
    if not accounts_on:
        return "everyone"
    members = service.members(workspace.id, caller)[1]
    parts = [f"{m.name}: {m.role}" for m in members]
    everyone = f"everyone signed in: {workspace.default_role}" if workspace.default_role else _NOBODY
    return "; ".join([everyone, *parts])


workspaces = service.list_workspaces(caller)
st.dataframe(
    [
        {
            "workspace": w.name,
            "documents": service.document_count(w.id, caller),
            "your role": w.role,
            "who may do what": _who(w),
        }
        for w in workspaces
    ],
    hide_index=True,
    width="stretch",
)

may_share = caller.manages or not accounts_on
with st.form("workspaces.create", clear_on_submit=True):
    st.subheader("New workspace")
    name = st.text_input("Name", max_chars=64, key="workspaces.new_name")
    shared = st.checkbox(
        "Shared",
        value=may_share,
        disabled=not (accounts_on and may_share),
        help="Only admins create shared workspaces; yours are private to you." if accounts_on else None,
        key="workspaces.shared",
    )
    if st.form_submit_button("Create", icon=":material/add:"):
        try:
            created = service.create_workspace(name, caller, shared=shared or not accounts_on)
        except RagError as err:
            show_error(err)
        else:
            choose(created.id)
            st.session_state["workspaces.flash"] = f"Created {md(created.label)}."
            st.rerun()

renamable = [w for w in workspaces if w.role == "owner"]
if renamable:
    st.subheader("Rename or delete")
    by_id = {w.id: w for w in renamable}
    chosen = by_id[st.selectbox("Workspace", list(by_id), format_func=lambda i: by_id[i].label, key="workspaces.pick")]
    deletable = chosen.id != "default" and (caller.manages or not accounts_on or not chosen.shared)
    new_name = st.text_input("New name", value=chosen.name, max_chars=64, key=f"workspaces.rename.{chosen.id}")
    rename_col, delete_col = st.columns(2)
    if rename_col.button("Rename", key="workspaces.rename", icon=":material/edit:"):
        try:
            renamed = service.rename_workspace(chosen.id, new_name, caller)
        except RagError as err:
            show_error(err)
        else:
            st.session_state["workspaces.flash"] = f"Renamed to {md(renamed.label)}."
            st.rerun()
    if delete_col.button("Delete…", key="workspaces.delete", icon=":material/delete:", disabled=not deletable):
        st.session_state["workspaces.pending_delete"] = chosen.id
    if st.session_state.get("workspaces.pending_delete") == chosen.id:
        count = service.document_count(chosen.id, caller)
        st.warning(
            f"Delete {md(chosen.label)} with its {count} document(s), their chunks and every chat in it? "
            "Uploads still indexing into it are cancelled first. This cannot be undone."
        )
        yes, no = st.columns(2)
        if yes.button("Yes, delete", key="workspaces.confirm_delete", type="primary"):
            st.session_state.pop("workspaces.pending_delete", None)
            try:
                with st.spinner("Deleting…"):
                    removed = service.delete_workspace(chosen.id, caller)
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

shared = [w for w in workspaces if w.shared]
if accounts_on and caller.manages and shared:
    st.subheader("Roles")
    by_id = {w.id: w for w in shared}
    target = by_id[st.selectbox("Workspace", list(by_id), format_func=lambda i: by_id[i].label, key="roles.pick")]
    options = [None, *ROLES]
    default_role = st.selectbox(
        "Everyone signed in may",
        options,
        index=options.index(target.default_role),
        format_func=lambda r: f"{r}: {_ROLE_HELP[r]}" if r else "nothing (members only; others do not see it)",
        key=f"roles.default.{target.id}",
    )
    if default_role != target.default_role:
        try:
            service.set_default_role(target.id, default_role, caller)
        except RagError as err:
            show_error(err)
        else:
            st.session_state["workspaces.flash"] = f"Everyone signed in is now {default_role or 'not a member'} there."
            st.rerun()
    names = [a.name for a in get_accounts(service.settings).list()]
    who, role, grant_col = st.columns([2, 2, 1], vertical_alignment="bottom")
    account = who.selectbox("Account", names, key="roles.account")
    chosen_role = role.selectbox("Role", ROLES, format_func=lambda r: f"{r}: {_ROLE_HELP[r]}", key="roles.role")
    if grant_col.button("Grant", key="roles.grant", icon=":material/person_add:") and account:
        try:
            member = service.grant(target.id, account, chosen_role, caller)
        except RagError as err:
            show_error(err)
        else:
            st.session_state["workspaces.flash"] = f"{md(member.name)} is now {member.role} in {md(target.name)}."
            st.rerun()
    members = service.members(target.id, caller)[1]
    if members:
        gone = st.selectbox("Take a role away from", [m.name for m in members], key="roles.revoke_name")
        if st.button("Revoke", key="roles.revoke", icon=":material/person_remove:"):
            service.revoke(target.id, gone, caller)
            st.session_state["workspaces.flash"] = f"{md(gone)} has only the default role in {md(target.name)} now."
            st.rerun()
