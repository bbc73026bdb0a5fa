"""Workspaces against the real Milvus: isolation in every search, list, eval and delete; names refused with a
message; deleting one while it is being indexed; and a data dir from before workspaces becoming `default`."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli import cli
from rag.errors import WorkspaceError, WorkspaceNotFoundError
from rag.jobs import JobState
from rag.options import AskOptions
from rag.service import RagService
from rag.store import Scope
from rag.workspaces import check_name
from tests.conftest import _drop
from tests.rag.test_cli import cli_env  # noqa: F401 - the fixture
from tests.rag.test_jobs import _doc

pytestmark = pytest.mark.milvus

MODES = ("dense", "keyword", "hybrid")


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), obj={})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_documents_of_one_workspace_never_reach_another(cli_env, corpus: Path, tmp_path: Path) -> None:  # noqa: ANN001, F811
    created = json.loads(_run("workspaces", "create", "a", "--json"))
    _run("workspaces", "create", "b")
    ingested = [
        json.loads(x) for x in _run("--workspace", "a", "ingest", str(corpus / "zoo.pdf"), "--json").splitlines()
    ]
    assert ingested[0]["status"] == "indexed"
    # The same file in two workspaces is two documents.
    both = _doc(tmp_path, "shared.txt")
    in_a = json.loads(_run("--workspace", "a", "ingest", str(both), "--json"))
    in_b = json.loads(_run("--workspace", "b", "ingest", str(both), "--json"))
    assert in_a["status"] == in_b["status"] == "indexed" and in_a["doc_id"] != in_b["doc_id"]

    listed_b = json.loads(_run("--workspace", "b", "docs", "list", "--json"))
    assert [d["file_name"] for d in listed_b] == ["shared.txt"]
    question = "How do I create a zoo series from a numeric vector?"
    for mode in MODES:
        asked = json.loads(_run("--workspace", "b", "ask", question, "--retrieval", mode, "--top-k", "10", "--json"))
        assert {s["file_name"] for s in asked["sources"]} <= {"shared.txt"}, mode
        asked_a = json.loads(_run("--workspace", "a", "ask", question, "--retrieval", mode, "--json"))
        assert asked_a["sources"][0]["file_name"] == "zoo.pdf", mode
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": question, "file": "zoo.pdf", "evidence": "zoo"}) + "\n")
    refused = CliRunner().invoke(cli, ["--workspace", "b", "eval", str(qa)], obj={})
    assert refused.exit_code == 1 and "zoo.pdf" in refused.output
    listing = {w["name"]: w for w in json.loads(_run("workspaces", "list", "--json"))}
    assert listing["a"]["documents"] == 2 and listing["b"]["documents"] == 1 and listing["a"]["id"] == created["id"]

    svc = RagService(cli_env)
    try:
        a_id = svc.workspace("a").id
        b_id = svc.workspace("b").id
        svc.conversations.append("sid", _turn("What is zoo?"), a_id)
        svc.conversations.append("sid", _turn("What is shared?"), b_id)
        a_docs = svc.documents(a_id)
        stored = {d.file_name: Path(d.stored_path) for d in a_docs}
        deleted = json.loads(_run("workspaces", "delete", "a", "--json"))
        assert deleted == {"name": "a", "documents": 2}

        count = svc.runtime.run(svc.store.acount_filtered(Scope(a_id)))
        assert count == 0 and svc.library.list(a_id) == []
        assert svc.store.keyword is not None and not any(svc.store.keyword.chunk_ids(d.doc_id) for d in a_docs)
        assert not stored["zoo.pdf"].exists()  # its bytes were a's alone
        assert stored["shared.txt"].exists()  # these bytes are b's too
        assert svc.conversations.history("sid", a_id) == [] and len(svc.conversations.history("sid", b_id)) == 1
        assert [d.file_name for d in svc.documents(b_id)] == ["shared.txt"]
        assert svc.count_chunks(in_b["doc_id"]) == in_b["chunks"]
        with pytest.raises(WorkspaceNotFoundError):
            svc.workspace("a")
    finally:
        svc.close()
    unknown = CliRunner().invoke(cli, ["--workspace", "a", "docs", "list"], obj={})
    assert unknown.exit_code == 1 and "There is no workspace named “a”" in unknown.output


def _turn(text: str):  # noqa: ANN202
    from rag.conversations import StoredTurn

    return StoredTurn(role="user", content=text)


def test_a_search_in_one_workspace_never_returns_another_chunk(service: RagService, tmp_path: Path) -> None:
    one, two = service.create_workspace("one"), service.create_workspace("two")
    words = _doc(tmp_path, "words.txt")
    report_one = service.ingest([words, _doc(tmp_path, "only-one.txt")], workspace=one.id)
    report_two = service.ingest([words], workspace=two.id)
    ids_one = {f.doc_id for f in report_one.files}
    ids_two = {f.doc_id for f in report_two.files}
    assert not ids_one & ids_two
    question = words.read_text()[:200]
    for mode in MODES:
        for workspace, ids in ((one.id, ids_one), (two.id, ids_two)):
            hits = service.retrieve(question, AskOptions(top_k=20, retrieval=mode, workspace=workspace))
            assert hits and {h.doc_id for h in hits} <= ids, (mode, workspace)
        unknown = AskOptions(retrieval=mode, workspace="nobody")
        with pytest.raises(WorkspaceNotFoundError):  # the service refuses a workspace that does not exist
            service.retrieve(question, unknown)
        assert service.runtime.run(service.engine.aretrieve(question, unknown)) == [], mode  # and nothing matches


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "needs a name"),
        ("   ", "needs a name"),
        ("x" * 65, "at most 64"),
        ("../etc", "cannot be"),
        ("a/b", "cannot be"),
    ],
)
def test_bad_workspace_names_are_refused_with_a_message(name: str, message: str) -> None:
    with pytest.raises(WorkspaceError) as err:
        check_name(name)
    assert message in err.value.user_message


def test_the_default_workspace_cannot_be_deleted_and_names_are_unique(service: RagService) -> None:
    with pytest.raises(WorkspaceError) as err:
        service.delete_workspace("default")
    assert "cannot be deleted" in err.value.user_message
    service.create_workspace("Research")
    with pytest.raises(WorkspaceError) as err:
        service.create_workspace(" Research ")
    assert "already exists" in err.value.user_message


def test_deleting_a_workspace_being_indexed_cancels_the_job_first(service: RagService, tmp_path: Path) -> None:
    busy = service.create_workspace("busy")
    big = _doc(tmp_path, "big.txt", sentences=3000)
    job = service.start_upload_job([("big.txt", io.BytesIO(big.read_bytes()))], owner="alice", workspace=busy.id)
    while (snap := service.job(job.id)) and snap.active and snap.files[0].chunks_done == 0:
        time.sleep(0.05)

    service.delete_workspace("busy")

    assert service.job(job.id).state == JobState.CANCELLED  # type: ignore[union-attr]
    assert service.runtime.run(service.store.acount_filtered(Scope(busy.id))) == 0
    assert service.library.list(busy.id, status=None) == []
    assert not any((Path(service.settings.data_dir) / "uploads").iterdir())


def test_a_collection_from_before_workspaces_becomes_default(make_settings, embedder, tmp_path: Path) -> None:  # noqa: ANN001
    from llama_index.vector_stores.milvus import MilvusVectorStore

    from rag.store import collection_schema

    settings = make_settings()
    svc = RagService(settings, embedder=embedder)
    try:
        report = svc.ingest([_doc(tmp_path, "old.txt")])
        doc_id = report.files[0].doc_id
        # Rewrite the collection as a version without workspaces made it: no workspace field, no value.
        rows = svc.runtime.run(svc.store._aread_all(f'doc_id == "{doc_id}"', ["*"], "read"))
        svc.runtime.run(svc.store.adrop())
    finally:
        svc.close()
    legacy = MilvusVectorStore(
        **collection_schema(svc.connection, settings.collection, embedder.dim, "Strong"), overwrite=True
    )
    legacy.client.insert(settings.collection, [{k: v for k, v in r.items() if k != "workspace"} for r in rows])
    assert "workspace" not in {f["name"] for f in legacy.client.describe_collection(settings.collection)["fields"]}

    svc = RagService(settings, embedder=embedder)
    try:
        assert svc.runtime.run(svc.store.acount_filtered(Scope("default"))) == len(rows)
        hits = svc.retrieve("old", AskOptions(retrieval="dense", workspace="default"))
        assert hits and hits[0].file_name == "old.txt"
        assert [d.doc_id for d in svc.documents()] == [doc_id]
    finally:
        _drop(svc)
