"""The CLI over the same engine: JSON schemas, exit codes and user messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli import cli
from tests.conftest import REPO

pytestmark = pytest.mark.milvus


@pytest.fixture
def cli_env(make_settings, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    settings = make_settings()
    monkeypatch.setenv("MILVUS_URI", settings.milvus_uri)
    monkeypatch.setenv("MILVUS_TOKEN", settings.milvus_token.get_secret_value())
    monkeypatch.setenv("RAG_COLLECTION", settings.collection)
    monkeypatch.setenv("RAG_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RAG_DATABASE_URL", settings.database_url)
    yield settings
    from rag.service import RagService

    svc = RagService(settings)
    svc.runtime.run(svc.store.adrop())
    svc.close()


def test_ingest_ask_list_delete(cli_env, corpus: Path, tmp_path: Path) -> None:  # noqa: ANN001
    runner = CliRunner()
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"not a pdf")
    result = runner.invoke(cli, ["ingest", str(corpus / "zoo.pdf"), str(bad), "--json"], obj={})
    assert result.exit_code == 2, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [set(r) for r in rows] == [{"file", "status", "doc_id", "chunks", "error"}] * 2
    assert rows[0]["status"] == "indexed" and rows[0]["chunks"] > 0 and rows[0]["error"] is None
    assert rows[1]["status"] == "failed" and "bad.pdf" in rows[1]["error"]

    again = runner.invoke(cli, ["ingest", str(corpus / "zoo.pdf"), "--json"], obj={})
    assert again.exit_code == 0 and json.loads(again.stdout)["status"] == "unchanged"

    asked = runner.invoke(
        cli, ["ask", "Which R package provides a class for irregular time series?", "--top-k", "3", "--json"], obj={}
    )
    assert asked.exit_code == 0, asked.output
    payload = json.loads(asked.stdout)
    assert payload["mode"] == "retrieval-only" and len(payload["sources"]) == 3
    assert set(payload["sources"][0]) == {"file_name", "page", "score", "text"}
    assert payload["sources"][0]["file_name"] == "zoo.pdf" and isinstance(payload["sources"][0]["page"], int)

    listed = json.loads(runner.invoke(cli, ["docs", "list", "--json"], obj={}).stdout)
    assert [d["file_name"] for d in listed] == ["zoo.pdf"] and listed[0]["pages"] == 30

    deleted = runner.invoke(cli, ["docs", "delete", rows[0]["doc_id"][:12]], obj={})
    assert deleted.exit_code == 0 and "zoo.pdf" in deleted.output
    missing = runner.invoke(cli, ["docs", "delete", "0123456789ab"], obj={})
    assert missing.exit_code == 1 and "No document has the id" in missing.output
    assert json.loads(runner.invoke(cli, ["docs", "list", "--json"], obj={}).stdout) == []


def test_docs_list_shows_the_newest_page_and_says_how_many_there_are(tmp_path: Path) -> None:
    from rag.catalog import Catalog, DocumentRecord
    from rag.config import load_settings
    from rag.database import Database

    settings = load_settings(data_dir=tmp_path / "data")
    catalog = Catalog(Database.open(settings), settings.collection)
    for i in range(3):
        record = DocumentRecord(
            doc_id=f"{i:064d}", file_name=f"f{i}.txt", file_type="txt", size=1, pages=None, chunks=1,
            status="indexing", stored_path=f"/x/{i}", added_at=1000.0 + i,
        )  # fmt: skip
        catalog.begin(record, lease_until=0)
        catalog.finish(record.doc_id, chunks=1, pages=None)
    catalog.close()
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path / "data"), "docs", "list"]
    page = runner.invoke(cli, [*base, "--limit", "2", "--json"], obj={})
    assert [d["file_name"] for d in json.loads(page.stdout)] == ["f2.txt", "f1.txt"]
    assert "Showing the 2 newest of 3 documents" in page.stderr
    every = runner.invoke(cli, [*base, "--limit", "0"], obj={})
    assert len(every.stdout.splitlines()) == 3 and every.stderr == ""


def test_bad_setting_is_a_message_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_TOP_K", "0")
    result = CliRunner().invoke(cli, ["docs", "list"], obj={})
    assert result.exit_code == 1 and "Invalid configuration" in result.output and "Traceback" not in result.output


def test_help_lists_every_command() -> None:
    out = CliRunner().invoke(cli, ["--help"], obj={}).output
    for command in ("ask", "bench", "docs", "ingest", "milvus", "worker", "status"):
        assert command in out


@pytest.mark.milvus
def test_bench_prints_a_row_per_measurement_with_its_note(cli_env) -> None:  # noqa: ANN001
    args = ["bench", "--counts", "3", "--dim", "8", "--consistency", "Session", "--experiments", "add,search"]
    table = CliRunner().invoke(cli, [*args, "--repeat", "2"], obj={})
    assert table.exit_code == 0, table.output
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == ["experiment", "mode", "N", "seconds", "min-max", "ms/item", "speedup", "note"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [experiment, mode, "3"] for experiment in ("add", "search") for mode in ("sync", "seed-async", "project-async")
    ]
    low, high = (float(x) for x in lines[1].split()[4].split("-"))
    assert low <= float(lines[1].split()[3]) <= high  # the median lies within the rounds' spread
    assert "in flight" in lines[3] and "dispatched by the engine's store" in lines[6]
    assert lines[3].endswith("runs per round")  # three rows take milliseconds: repeated within each round
    only = ["--modes", "seed-async,project-async", "--repeat", "1", "--json"]
    report = json.loads(CliRunner().invoke(cli, [*args, *only], obj={}).stdout)
    assert [r["mode"] for r in report["rows"]] == ["seed-async", "project-async"] * 2
    assert all(r["repeats"] == 1 and r["seconds_min"] == r["seconds"] == r["seconds_max"] for r in report["rows"])
    assert report["milvus_version"].startswith("v2.3") and report["machine"]["cpus"]


def test_ingest_json_echoes_each_file_as_given(cli_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    folder = tmp_path / "docs"
    folder.mkdir()
    long_name = "a" * 205 + ".txt"  # 209 characters: stored and listed whole
    (folder / long_name).write_text("Giraffes eat acacia leaves. " * 30, encoding="utf-8")
    (folder / "sub").mkdir()
    (folder / "sub" / "zebras.md").write_text("Zebras have stripes. " * 30, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    given = [f"./docs/{long_name}", "docs//sub/"]

    result = CliRunner().invoke(cli, ["ingest", *given, "--json"], obj={})

    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in rows] == [f"./docs/{long_name}", "docs//sub/zebras.md"]
    assert [r["status"] for r in rows] == ["indexed", "indexed"]
    shown = {d["file_name"] for d in json.loads(CliRunner().invoke(cli, ["docs", "list", "--json"], obj={}).stdout)}
    assert shown == {"zebras.md", long_name}  # the names as given, whole
    listed = CliRunner().invoke(cli, ["docs", "list"], obj={}).stdout
    assert sorted(line.split("  ")[-1] for line in listed.splitlines()) == sorted([long_name, "zebras.md"])


def test_ask_imports_only_what_answering_needs(cli_env, tmp_path: Path) -> None:  # noqa: ANN001
    """`ask` is meant to answer in seconds: no LlamaIndex (2-3 s of imports), no torch on the ONNX backend, no
    Streamlit, none of the ingestion, job or benchmark machinery. A real process, since imports are the point."""
    (tmp_path / "giraffes.txt").write_text("Giraffes eat acacia leaves high in the savanna canopy. " * 20)
    assert CliRunner().invoke(cli, ["ingest", str(tmp_path / "giraffes.txt")], obj={}).exit_code == 0
    forbidden = ("torch", "transformers", "sentence_transformers", "streamlit", "llama_index", "rag.ingest",
                 "rag.jobs", "rag.bench", "rag.service", "rag.readers")  # fmt: skip
    code = (
        "import json, sys\n"
        "from rag.cli import cli\n"
        "cli(['ask', 'What do giraffes eat?', '--json'], obj={}, standalone_mode=False)\n"
        f"found = [m for m in {forbidden!r} if any(k == m or k.startswith(m + '.') for k in sys.modules)]\n"
        "print(json.dumps(found))\n"
    )
    env = {**os.environ, "RAG_EMBED_BACKEND": "onnx-int8"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answer, imported = done.stdout.strip().splitlines()[-2:]
    assert json.loads(answer)["sources"][0]["file_name"] == "giraffes.txt"
    assert json.loads(imported) == []


def test_models_build_builds_once_then_reports_it_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The set-up's `models build` exports and calibrates into a fresh cache; the second run has nothing to do.
    A tiny random model stands in for the bundled one (the same steps, seconds instead of minutes)."""
    from tests.rag.test_embeddings import _tiny_model

    monkeypatch.setenv("EMBED_MODEL", str(_tiny_model(tmp_path / "tiny")))
    monkeypatch.setenv("RAG_EMBED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))

    first = CliRunner().invoke(cli, ["models", "build", "--json"], obj={})
    assert first.exit_code == 0, first.output
    made = json.loads(first.stdout)
    assert made["built"] and made["calibrated"] and not made["already_built"] and made["fallback"] is None
    assert Path(made["folder"]).parent == tmp_path / "cache" and (Path(made["folder"]) / "model-int8.onnx").is_file()
    assert list(Path(made["folder"]).glob("choice-*.json"))  # auto's decision is kept beside the build

    again = CliRunner().invoke(cli, ["models", "build"], obj={})
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[0] == "already built" and f"models: {made['folder']}" in again.output
    assert made["backend"] in again.output


def test_models_build_with_torch_has_nothing_to_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_EMBED_BACKEND", "torch")
    monkeypatch.setenv("RAG_EMBED_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(cli, ["models", "build"], obj={})
    assert result.exit_code == 0 and result.output.startswith("nothing to build: torch-")
    assert not (tmp_path / "cache").exists()


def test_status_says_what_embeds_and_why_without_building_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))  # no embedded server runs here: exit code 3
    built = CliRunner().invoke(cli, ["milvus", "status", "--json"], obj={})  # the tests' cache: built, chosen
    assert built.exit_code == 3 and "auto: fastest of" in json.loads(built.stdout)["embedding"]

    monkeypatch.setenv("RAG_EMBED_CACHE_DIR", str(tmp_path / "empty"))
    fresh = CliRunner().invoke(cli, ["milvus", "status"], obj={})
    assert fresh.exit_code == 3
    assert "embedding: auto: not built yet (python -m rag models build" in fresh.output
    assert not list((tmp_path / "empty").glob("all-MiniLM-L6-v2-*"))  # nothing was built


def test_docs_list_reads_the_catalogue_alone(tmp_path: Path) -> None:
    """`docs list` reads SQLite: no LlamaIndex, Milvus client or model is imported (it answers in under a second)."""
    forbidden = ("llama_index", "pymilvus", "onnxruntime", "torch", "streamlit")
    code = (
        "import json, sys\n"
        "from rag.cli import cli\n"
        "cli(['docs', 'list', '--json'], obj={}, standalone_mode=False)\n"
        f"print(json.dumps([m for m in {forbidden!r} if any(k == m or k.startswith(m + '.') for k in sys.modules)]))\n"
    )
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == ["[]", "[]"]  # no documents, nothing heavy imported


def test_status_lists_the_queue_and_its_workers(db_settings, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """`status --json` reads the database alone (either engine): queue depth, and each worker's host, pid, jobs,
    heartbeat and state; one silent for longer than its lease is lost."""
    import time

    from sqlalchemy import update

    from rag import schema
    from rag.database import Database
    from rag.jobs import JobQueue, NewFile, new_worker_id

    monkeypatch.setenv("RAG_DATA_DIR", str(db_settings.data_dir))
    monkeypatch.setenv("RAG_DATABASE_URL", db_settings.database_url)
    empty = json.loads(CliRunner().invoke(cli, ["status", "--json"], obj={}).stdout)
    assert empty == {"queue": {"queued": 0, "running": 0}, "workers": []}

    with Database.open(db_settings) as db:
        queue = JobQueue(db, db_settings.collection, lease=db_settings.job_lease)
        me, other = new_worker_id(), "build-7|elsewhere|4242|1|abcd1234"
        queue.register(me, "worker", 2)
        queue.register(other, "worker", 1)
        job = queue.enqueue("alice", "default", [NewFile(name="a.txt", stored="0" * 64 + ".txt")])
        queue.enqueue("bob", "default", [NewFile(name="b.txt", stored="1" * 64 + ".txt")])
        assert queue.claim(me).id == job.id
        with db.write() as conn:
            old = time.time() - 2 * db_settings.job_lease
            conn.execute(update(schema.workers).where(schema.workers.c.id == other).values(heartbeat_at=old))
    shown = json.loads(CliRunner().invoke(cli, ["status", "--json"], obj={}).stdout)
    assert shown["queue"] == {"queued": 1, "running": 1}
    workers = {w["host"]: w for w in shown["workers"]}
    assert workers["build-7"]["state"] == "lost" and workers["build-7"]["heartbeat_age"] >= db_settings.job_lease
    mine = workers[me.split("|")[0]]
    assert (mine["pid"], mine["state"], mine["jobs"], mine["concurrency"]) == (os.getpid(), "running", [job.id], 2)
    text = CliRunner().invoke(cli, ["status"], obj={}).stdout
    assert "jobs: 1 queued, 1 running" in text and "lost     build-7 pid 4242" in text
