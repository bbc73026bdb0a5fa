"""The Workspaces page and the sidebar's workspace chooser, without accounts (every workspace shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.support import AppEnv, page_text, write_doc

pytestmark = pytest.mark.milvus

PAGE = "pages/workspaces.py"


def test_create_choose_rename_and_delete_a_workspace(app_env: AppEnv, tmp_path: Path) -> None:
    at = app_env.app(PAGE)
    at.run()
    assert not at.exception
    at.text_input(key="workspaces.new_name").set_value("HR policies")
    at.button[0].click().run()  # the form's Create
    assert not at.exception and "Created HR policies." in [s.value for s in at.success]
    service = app_env.service()
    hr = service.workspace("HR policies")
    assert at.session_state["workspace.id"] == hr.id  # the new workspace is the chosen one

    # Upload through the engine into it: the Documents page of that workspace lists it, default's does not.
    service.ingest([write_doc(tmp_path / "src", "leave.txt", "Staff take 25 days of leave a year. " * 20)], None, hr.id)
    docs = app_env.app("pages/documents.py")
    docs.session_state["workspace.id"] = hr.id
    docs.run()
    assert "leave.txt" in page_text(docs)
    docs.selectbox(key="workspace.id").set_value("default").run()
    assert "leave.txt" not in page_text(docs) and "No documents are indexed in default yet." in page_text(docs)

    at.selectbox(key="workspaces.pick").set_value(hr.id).run()
    at.text_input(key=f"workspaces.rename.{hr.id}").set_value("People").run()
    at.button(key="workspaces.rename").click().run()
    assert service.workspace("People").id == hr.id

    at.button(key="workspaces.delete").click().run()
    assert "Delete People with its 1 document(s)" in page_text(at)
    at.button(key="workspaces.confirm_delete").click().run()
    assert not at.exception
    assert [w.name for w in service.list_workspaces()] == ["default"] and service.library.list(hr.id) == []


def test_a_bad_name_is_refused_with_a_message(app_env: AppEnv) -> None:
    at = app_env.app(PAGE)
    at.run()
    at.text_input(key="workspaces.new_name").set_value("../etc")
    at.button[0].click().run()
    assert not at.exception
    assert any("cannot be a workspace name" in e.value for e in at.error)
