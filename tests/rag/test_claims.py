"""Writer claims in the catalogue, without Milvus: two libraries on one catalogue file stand for two processes
(each has its own in-process locks, so only the catalogue can keep them apart)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from rag import documents
from rag.config import load_settings
from rag.documents import DocumentLibrary, _machine, doc_key, new_owner, owner_dead
from rag.errors import DocumentBusyError
from rag.processes import started


def _library(data_dir: Path) -> DocumentLibrary:
    return DocumentLibrary(load_settings(data_dir=data_dir), store=None)  # type: ignore[arg-type] - claims only


def test_two_processes_take_turns_on_one_document(tmp_path: Path) -> None:
    one, two = _library(tmp_path), _library(tmp_path)
    spans: list[tuple[str, float, float]] = []

    async def write(library: DocumentLibrary, name: str) -> None:
        async with library.writer("d1"):
            began = time.monotonic()
            await asyncio.sleep(0.3)
            spans.append((name, began, time.monotonic()))

    async def both() -> None:
        await asyncio.wait_for(asyncio.gather(write(one, "one"), write(two, "two")), 30)

    asyncio.run(both())
    (_, _, first_end), (_, second_start, _) = sorted(spans, key=lambda s: s[1])
    assert second_start >= first_end  # never both inside
    assert one.catalog.claims() == {}  # both released
    one.close()
    two.close()


def test_the_lease_is_renewed_while_held_and_a_lost_claim_stops_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(documents, "LEASE_SECONDS", 0.4)  # renewed every 0.1 s
    one, two = _library(tmp_path), _library(tmp_path)

    async def scenario() -> None:
        async with one.writer("d1") as held:
            for _ in range(12):  # three leases long: only renewal keeps the other writer out
                await asyncio.sleep(0.1)
                with pytest.raises(DocumentBusyError):
                    async with two.writer("d1", wait=False):
                        pass
            await one.aconfirm(held)
            # The holder stalls past its lease and another writer takes the claim over: the commit must not happen.
            assert one.catalog.claim(doc_key("d1"), "someone else", time.time() + 60, now=time.time() + 3600)
            with pytest.raises(DocumentBusyError):
                await one.aconfirm(held)
            assert held.lost
        assert one.catalog.claims()[doc_key("d1")][0] == "someone else"  # not released by the loser

    asyncio.run(asyncio.wait_for(scenario(), 30))
    one.close()
    two.close()


def test_a_claim_left_by_a_dead_process_on_this_machine_is_taken_at_once(tmp_path: Path) -> None:
    library = _library(tmp_path)
    if not _machine():
        pytest.skip("no /proc: a dead writer is known only by its lease")  # not Linux
    sleeper = subprocess.Popen(["sleep", "60"])
    owner = f"{_machine()}|{sleeper.pid}|{started(sleeper.pid)}|abc"
    assert not owner_dead(owner) and not owner_dead(new_owner())
    library.catalog.claim(doc_key("d1"), owner, time.time() + 3600, time.time())
    library.catalog.claim(doc_key("d2"), "another-host|1|1|abc", time.time() + 3600, time.time())

    async def attempt(doc_id: str) -> bool:
        try:
            async with library.writer(doc_id, wait=False):
                return True
        except DocumentBusyError:
            return False

    assert not asyncio.run(attempt("d1"))  # alive: its lease stands
    sleeper.kill()
    sleeper.wait()
    assert owner_dead(owner)
    assert asyncio.run(attempt("d1"))  # dead: taken without waiting an hour
    assert not asyncio.run(attempt("d2"))  # a writer elsewhere cannot be checked: its lease stands
    library.close()
