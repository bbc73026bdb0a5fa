"""Build `datadir/`: a data dir as the release before the database layer (commit 90dfae5) left it.

Run with that revision's code (`git worktree add /tmp/old 90dfae5 && cd /tmp/old && python
/path/to/this/file OUT`); the files it wrote are committed beside it, so the migration test opens exactly
what that release made: accounts (an admin, a user), a failed sign-in, documents in `default`, in a shared
workspace and in a private one, and a conversation in each. No Milvus is involved: the catalogue rows,
workspaces, accounts and turns are what a migration must carry over.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from argon2 import PasswordHasher

from rag.accounts import Accounts
from rag.catalog import Catalog, DocumentRecord
from rag.conversations import ConversationStore, StoredTurn
from rag.query import Source
from rag.workspaces import Workspaces

COLLECTION = "documents"


def main(out: Path) -> None:
    out.mkdir(parents=True)
    uploads = out / "uploads"
    uploads.mkdir()
    accounts = Accounts(out / "accounts.sqlite3", hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    accounts.add("alice", "alice-password-1", admin=True)
    accounts.add("bob", "bob-password-22")
    assert accounts.verify("bob", "a wrong guess", "192.0.2.10") is None  # one failed sign-in row
    accounts.close()

    workspaces = Workspaces(out / "catalog.sqlite3", COLLECTION)
    team = workspaces.create("Team notes")  # shared
    private = workspaces.create("bob", owner="bob", shared=False)
    workspaces.close()

    catalog = Catalog(out / "catalog.sqlite3", COLLECTION)
    files = [
        ("default", "cafeteria.txt", "The cafeteria serves lentil soup every Thursday."),
        (team.id, "roadmap.txt", "The roadmap ships the search page in May."),
        (private.id, "diary.txt", "Bob keeps his bicycle in the basement."),
    ]
    for number, (workspace, name, text) in enumerate(files):
        stored = uploads / f"{number:064d}.txt"
        stored.write_text(text)
        record = DocumentRecord(
            doc_id=f"{number:064d}",
            file_name=name,
            file_type="txt",
            size=len(text),
            pages=None,
            chunks=1,
            status="indexing",
            stored_path=str(stored),
            added_at=time.time(),
            workspace=workspace,
        )
        catalog.begin(record, time.time() + 120)
        catalog.finish(record.doc_id, 1, None)
    catalog.close()

    conversations = ConversationStore(out / "conversations.sqlite3")
    for owner, workspace, question in (
        ("Zq3lSxv9dQ0pQhL2cKp1aA", "default", "What is served on Thursday?"),
        ("user:alice", team.id, "When does the search page ship?"),
        ("user:bob", private.id, "Where is the bicycle?"),
    ):
        conversations.append(owner, StoredTurn(role="user", content=question), workspace)
        source = Source(doc_id="0" * 64, file_name="cafeteria.txt", page=None, score=0.5, text="lentil soup")
        conversations.append(
            owner, StoredTurn(role="assistant", content="An answer.", mode="retrieval-only", sources=[source]), workspace
        )
    conversations.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
