"""RagService as a whole: what it leaves on disk is private to the user running it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rag.conversations import ConversationStore, StoredTurn
from rag.service import RagService

pytestmark = pytest.mark.milvus


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_data_dir_and_its_databases_are_private(service: RagService, tmp_path: Path) -> None:
    previous = os.umask(0o022)  # the usual umask would leave new files readable by everyone
    try:
        source = tmp_path / "src" / "notes.txt"
        source.parent.mkdir()
        source.write_text("Giraffes eat acacia leaves. " * 40, encoding="utf-8")
        assert service.ingest([source]).files[0].status == "indexed"
        store = ConversationStore(service.settings.data_dir / "conversations.sqlite3")
        store.append("sid", StoredTurn(role="user", content="What do giraffes eat?"))
    finally:
        os.umask(previous)

    data = service.settings.data_dir
    assert _mode(data) == 0o700
    for name in ("catalog.sqlite3", "conversations.sqlite3"):
        assert _mode(data / name) == 0o600, name
        assert _mode(data / f"{name}-wal") == 0o600, name  # SQLite's journal takes the database's mode
    store.close()
