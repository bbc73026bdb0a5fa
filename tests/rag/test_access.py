"""Identity by id and roles per workspace, enforced by the service (the rules every page, CLI command and API
obey), against the real Milvus and on both database engines.

The scenarios of the security review: the renamed-default hijack, the pre-empted private workspace, the
re-created account name, and the silent replacement of someone else's file in a shared workspace.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import insert

from rag import schema
from rag.access import Caller
from rag.accounts import Account
from rag.conversations import StoredTurn
from rag.database import Database
from rag.documents import list_documents
from rag.embeddings import Embedder
from rag.errors import AccessDeniedError, AccountError, WorkspaceError, WorkspaceNotFoundError
from rag.service import RagService
from tests.conftest import _drop

pytestmark = pytest.mark.milvus

CHEAP = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


@pytest.fixture
def svc(make_settings, embedder: Embedder, database_url: str) -> Iterator[RagService]:  # noqa: ANN001
    """A service on each database engine in turn, with cheap password hashes."""
    service = RagService(make_settings(database_url=database_url), embedder=embedder)
    service.accounts._hasher = CHEAP
    yield service
    _drop(service)


def _add(svc: RagService, name: str, admin: bool = False) -> tuple[Account, Caller]:
    account = svc.accounts.add(name, f"{name}-password", admin=admin)
    return account, Caller.of(account)


def _file(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text * 5)
    return folder / name


def test_a_private_workspace_is_invisible_and_unmanageable_to_others(svc: RagService) -> None:
    _alice, alice = _add(svc, "alice")
    _bob, bob = _add(svc, "bob")
    _carol, carol = _add(svc, "carol", admin=True)
    mine = svc.private_workspace(alice)
    assert svc.private_workspace(alice) == mine  # made once
    assert mine.id not in {w.id for w in svc.list_workspaces(bob)}
    for action in (
        lambda: svc.workspace(mine.name, bob),
        lambda: svc.workspace(mine.id, bob),
        lambda: svc.documents(mine.id, bob),
        lambda: svc.rename_workspace(mine.id, "taken", bob),
        lambda: svc.delete_workspace(mine.id, carol),  # even an admin cannot see it
    ):
        with pytest.raises(WorkspaceNotFoundError) as err:
            action()
        assert "alice" not in err.value.user_message or mine.name not in err.value.user_message.split("“")[0]
    with pytest.raises(AccessDeniedError):
        svc.create_workspace("Research", bob, shared=True)  # only admins share
    shared = svc.create_workspace("Research", carol, shared=True)
    assert shared.id in {w.id for w in svc.list_workspaces(bob)}
    with pytest.raises(AccessDeniedError) as err:
        svc.delete_workspace("Research", bob)  # shared: only an admin manages it
    assert "Only an admin" in err.value.user_message
    assert svc.delete_workspace("Research", carol) == []


def test_the_renamed_default_cannot_be_hijacked(svc: RagService, tmp_path: Path) -> None:
    _admin, admin = _add(svc, "alice", admin=True)
    _bob, bob = _add(svc, "bob")
    svc.rename_workspace("default", "General", admin)
    with pytest.raises(WorkspaceError) as err:
        svc.create_workspace("default", bob, shared=False)
    assert "kept for the default workspace" in err.value.user_message
    # Even a private workspace named `default` (as an older release let anyone make) is never what the name means.
    with Database.open(svc.settings) as db, db.write() as conn:
        conn.execute(
            insert(schema.workspaces).values(
                collection=svc.settings.collection,
                id="b0b0b0b0b0b0",
                name="default",
                owner=_bob.id,
                shared=False,
                created_at=0.0,
            )
        )
    assert svc.workspace("default").id == "default"  # the CLI's RAG_WORKSPACE=default, as the operator
    assert svc.workspace("default", admin).id == "default"  # and the web app's first choice for anyone
    report = svc.ingest(
        [_file(tmp_path / "op", "memo.txt", "The operator's memo about parking. ")],
        workspace=svc.workspace("default").id,
    )
    assert report.files[0].status == "indexed"
    assert [d.file_name for d in list_documents(svc.settings)[0]] == ["memo.txt"]  # `docs list` reads `default`
    assert svc.documents("b0b0b0b0b0b0", bob) == []  # bob's private one received nothing


def test_an_accounts_own_workspace_cannot_be_pre_empted(svc: RagService) -> None:
    _admin, admin = _add(svc, "root", admin=True)
    _bob, bob = _add(svc, "bob")
    svc.create_workspace("carol", bob, shared=False)  # bob's private one, named after an account to come
    svc.create_workspace("carol", admin, shared=True)  # and a shared one with that name too
    with pytest.raises(WorkspaceError) as err:
        svc.create_workspace("carol", bob, shared=False)
    assert "already exists" in err.value.user_message  # bob's own name clash only
    _carol, carol = _add(svc, "carol")
    own = svc.private_workspace(carol)  # her first sign-in: nothing stands in the way
    assert (own.name, own.owner, own.shared) == ("carol", _carol.id, False)
    labels = sorted(w.label for w in svc.list_workspaces(carol))
    assert labels == ["carol", "carol (private)", "default"]  # bob's "carol" is not among them
    assert svc.workspace("carol", carol).id == own.id  # her own first, then the shared one


def test_a_recreated_account_name_inherits_nothing(svc: RagService, tmp_path: Path) -> None:
    _admin, admin = _add(svc, "root", admin=True)
    old, alice = _add(svc, "alice")
    private = svc.private_workspace(alice)
    svc.ingest(
        [_file(tmp_path / "a", "diary.txt", "Alice hides the key under the mat. ")], workspace=private.id, caller=alice
    )
    svc.conversations.append(alice.conversation_key, StoredTurn(role="user", content="Where is the key?"), private.id)

    with pytest.raises(AccountError) as err:
        svc.remove_account("alice", caller=admin)  # her private documents need a decision first
    assert "delete them, or hand them" in err.value.user_message
    svc.remove_account("alice", documents="hand-over", hand_to="root", caller=admin)

    new, alice_again = _add(svc, "alice")
    assert new.id != old.id
    fresh = svc.private_workspace(alice_again)
    assert fresh.id != private.id and svc.documents(fresh.id, alice_again) == []
    assert private.id not in {w.id for w in svc.list_workspaces(alice_again)}
    assert svc.conversations.history(alice_again.conversation_key, private.id) == []
    assert svc.conversations.history(alice.conversation_key, private.id) == []  # the old account's chats went
    handed = svc.workspace(private.id, admin)
    assert handed.owner == _admin.id and [d.owner for d in svc.documents(private.id, admin)] == [_admin.id]

    svc.ingest(
        [_file(tmp_path / "b", "notes.txt", "New Alice keeps notes on birds. ")], workspace=fresh.id, caller=alice_again
    )
    svc.remove_account("alice", documents="delete", caller=admin)
    assert svc.runtime.run(svc.store.acount()) == svc.documents(private.id, admin)[0].chunks  # hers are gone
    with pytest.raises(WorkspaceNotFoundError):
        svc.workspace(fresh.id)


def test_a_same_name_upload_in_a_shared_workspace_is_another_document(svc: RagService, tmp_path: Path) -> None:
    _admin, admin = _add(svc, "root", admin=True)
    _alice, alice = _add(svc, "alice")
    _bob, bob = _add(svc, "bob")
    team = svc.create_workspace("Team", admin, shared=True)  # everyone signed in: editor
    mine = svc.ingest(
        [_file(tmp_path / "a", "plan.txt", "Alice plans the launch for May. ")], workspace=team.id, caller=alice
    ).files[0]
    theirs = svc.ingest(
        [_file(tmp_path / "b", "plan.txt", "Bob plans the picnic for June. ")], workspace=team.id, caller=bob
    ).files[0]
    assert (mine.status, theirs.status) == ("indexed", "indexed")  # not "replaced"
    docs = {d.owner: d for d in svc.documents(team.id, alice)}
    assert set(docs) == {_alice.id, _bob.id} and {d.file_name for d in docs.values()} == {"plan.txt"}

    with pytest.raises(AccessDeniedError) as err:
        svc.delete_document(docs[_alice.id].doc_id, team.id, bob)
    assert "uploaded by someone else" in err.value.user_message
    with pytest.raises(AccessDeniedError):
        svc.reindex_document(docs[_alice.id].doc_id, "bob", team.id, bob)
    newer = svc.ingest(
        [_file(tmp_path / "c", "plan.txt", "Alice moves the launch to July. ")], workspace=team.id, caller=alice
    ).files[0]
    assert newer.status == "replaced"  # her own older version only
    assert {d.owner for d in svc.documents(team.id, alice)} == {_alice.id, _bob.id}
    svc.delete_document(docs[_bob.id].doc_id, team.id, bob)  # his own
    svc.delete_document(newer.doc_id, team.id, admin)  # admins own every shared workspace


def test_roles_decide_who_reads_uploads_and_sees(svc: RagService, tmp_path: Path) -> None:
    _admin, admin = _add(svc, "root", admin=True)
    _vic, vic = _add(svc, "vic")
    _eve, eve = _add(svc, "eve")
    board = svc.create_workspace("Board", admin, shared=True)
    svc.set_default_role("Board", None, admin)  # members only
    assert board.id not in {w.id for w in svc.list_workspaces(vic)}
    with pytest.raises(WorkspaceNotFoundError):
        svc.documents(board.id, vic)
    svc.grant("Board", "vic", "viewer", admin)
    svc.grant("Board", "eve", "owner", admin)
    assert {w.id: w.role for w in svc.list_workspaces(vic)}[board.id] == "viewer"
    with pytest.raises(AccessDeniedError) as err:
        svc.ingest([_file(tmp_path, "x.txt", "Minutes of the board. ")], workspace=board.id, caller=vic)
    assert "You are a viewer" in err.value.user_message
    done = svc.ingest([_file(tmp_path, "x.txt", "Minutes of the board. ")], workspace=board.id, caller=eve)
    assert svc.retrieve("board minutes", svc_options(board.id), caller=vic)[0].file_name == "x.txt"
    with pytest.raises(AccessDeniedError):
        svc.grant("Board", "vic", "owner", eve)  # owners do not give roles; admins do
    workspace, members = svc.members("Board", vic)
    assert workspace.default_role is None and [(m.name, m.role) for m in members] == [
        ("eve", "owner"),
        ("vic", "viewer"),
    ]
    svc.rename_workspace("Board", "Directors", eve)  # an owner renames
    svc.revoke("Directors", "vic", admin)
    assert board.id not in {w.id for w in svc.list_workspaces(vic)}
    with pytest.raises(WorkspaceNotFoundError):
        svc.retrieve("board minutes", svc_options(board.id), caller=vic)
    assert done.files[0].status == "indexed"
    with pytest.raises(AccessDeniedError):
        svc.evaluate([], ["dense", "hybrid"], workspace="default", caller=vic)  # several modes: admins only
    with pytest.raises(AccessDeniedError):
        next(iter(svc.bench(None, vic)))  # type: ignore[arg-type]


def test_anonymous_callers_are_refused_once_accounts_exist(svc: RagService) -> None:
    anyone = Caller.anonymous()
    assert [w.id for w in svc.list_workspaces(anyone)] == ["default"]
    svc.create_workspace("Open", anyone, shared=True)
    _add(svc, "root", admin=True)
    assert svc.list_workspaces(anyone) == []
    with pytest.raises(WorkspaceNotFoundError):
        svc.documents("default", anyone)


def svc_options(workspace: str):  # noqa: ANN201
    from rag.options import AskOptions

    return AskOptions(workspace=workspace, retrieval="keyword")
