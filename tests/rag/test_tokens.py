"""API tokens: only a hash is stored, the secret opens its token alone, revoking is immediate across handles,
and the `tokens` commands print a secret once and never again."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from click.testing import CliRunner

from rag.cli import cli
from rag.tokens import FILE_NAME, PREFIX, Tokens


def test_a_secret_is_stored_only_as_its_hash(tmp_path: Path) -> None:
    tokens = Tokens(tmp_path / "data" / FILE_NAME)
    token, secret = tokens.create("alice", account="alice", workspace="ws1", read_only=True)
    tokens.close()
    assert secret.startswith(f"{PREFIX}{token.id}_") and len(secret) > 40
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").iterdir())
    assert secret.encode() not in raw and secret.rsplit("_", 1)[1].encode() not in raw
    assert stat.S_IMODE((tmp_path / "data" / FILE_NAME).stat().st_mode) == 0o600


def test_verify_opens_only_the_right_token(tmp_path: Path) -> None:
    tokens = Tokens(tmp_path / FILE_NAME)
    first, secret = tokens.create("alice", account="alice", read_only=True)
    second, other = tokens.create("bob", account="bob")
    found = tokens.verify(secret)
    assert found is not None and found.id == first.id and found.read_only and found.account == "alice"
    assert tokens.verify(other).id == second.id  # type: ignore[union-attr]
    # Another token's id with this token's random part, a changed character, garbage: none opens anything.
    forged = f"{PREFIX}{second.id}_{secret.rsplit('_', 1)[1]}"
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for bad in (forged, tampered, "", "rag_", "Bearer x", secret + "x" * 200):
        assert tokens.verify(bad) is None, bad
    assert tokens.verify(secret).last_used_at is not None  # type: ignore[union-attr]


def test_revoking_refuses_the_token_at_once_in_another_handle(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    server, admin = Tokens(path), Tokens(path)  # as a server process and the CLI would hold them
    token, secret = admin.create("alice")
    assert server.verify(secret) is not None and server.any_active()
    revoked = admin.revoke(token.id)
    assert revoked is not None and not revoked.active
    assert server.verify(secret) is None and not server.any_active()
    assert admin.revoke("nosuchtoken") is None
    assert [t.id for t in server.list()] == [token.id]


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
