"""API tokens on both database engines: only a hash is stored, the secret opens its token alone, revoking is
immediate across handles, removing an account removes its tokens, and the `tokens` commands print a secret
once and never again."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from rag import schema
from rag.accounts import Accounts
from rag.cli import cli
from rag.config import Settings
from rag.database import Database
from rag.tokens import PREFIX, Tokens


def test_a_secret_is_stored_only_as_its_hash(db: Database) -> None:
    token, secret = Tokens(db).create("alice", workspace="ws1", read_only=True)
    assert secret.startswith(f"{PREFIX}{token.id}_") and len(secret) > 40
    with db.read() as conn:
        rows = [tuple(r) for r in conn.execute(select(schema.api_tokens)).all()]
    stored = repr(rows)
    assert secret not in stored and secret.rsplit("_", 1)[1] not in stored and token.id in stored


def test_verify_opens_only_the_right_token(db: Database) -> None:
    tokens = Tokens(db)
    first, secret = tokens.create("scripts", read_only=True)
    second, other = tokens.create("backup")
    found = tokens.verify(secret)
    assert found is not None and found.id == first.id and found.read_only and found.account_id is None
    assert tokens.verify(other).id == second.id  # type: ignore[union-attr]
    # Another token's id with this token's random part, a changed character, garbage: none opens anything.
    forged = f"{PREFIX}{second.id}_{secret.rsplit('_', 1)[1]}"
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for bad in (forged, tampered, "", "rag_", "Bearer x", secret + "x" * 200):
        assert tokens.verify(bad) is None, bad
    assert tokens.verify(secret).last_used_at is not None  # type: ignore[union-attr]


def test_revoking_refuses_the_token_at_once_in_another_process_handle(db_settings: Settings) -> None:
    server, admin = Database.open(db_settings), Database.open(db_settings)
    try:
        token, secret = Tokens(admin).create("scripts")
        assert Tokens(server).verify(secret) is not None and Tokens(server).any_active()
        revoked = Tokens(admin).revoke(token.id)
        assert revoked is not None and not revoked.active
        assert Tokens(server).verify(secret) is None and not Tokens(server).any_active()
        assert Tokens(admin).revoke("nosuchtoken") is None
        assert [t.id for t in Tokens(server).list()] == [token.id]
    finally:
        server.close()
        admin.close()


def test_removing_an_account_removes_its_tokens(db: Database) -> None:
    accounts, tokens = Accounts(db), Tokens(db)
    accounts.add("admin", "correct horse battery", admin=True)
    bob = accounts.add("bob", "correct horse battery")
    _, secret = tokens.create("bob", account_id=bob.id)
    assert tokens.verify(secret) is not None
    accounts.remove("bob")
    assert tokens.verify(secret) is None and tokens.list() == []


def test_the_tokens_commands(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    made = runner.invoke(cli, ["tokens", "create", "scripts", "--read-only"], obj={})
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert secret.startswith(PREFIX) and "shown once" in made.stderr
    listed = runner.invoke(cli, ["tokens", "list", "--json"], obj={})
    rows = json.loads(listed.stdout)
    assert len(rows) == 1 and rows[0]["name"] == "scripts" and rows[0]["read_only"] and not rows[0]["revoked"]
    assert secret not in listed.stdout and secret.rsplit("_", 1)[1] not in listed.stdout
    gone = runner.invoke(cli, ["tokens", "revoke", rows[0]["id"]], obj={})
    assert gone.exit_code == 0 and "Revoked" in gone.stdout
    assert json.loads(runner.invoke(cli, ["tokens", "list", "--json"], obj={}).stdout)[0]["revoked"]
    missing = runner.invoke(cli, ["tokens", "revoke", "000000000000"], obj={})
    assert missing.exit_code == 1 and "No API token has the id 000000000000" in missing.output
