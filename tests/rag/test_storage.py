"""Where uploads are kept (RAG_STORAGE_URL): the data dir, a shared folder two machines mount, and S3.

No S3-compatible store runs on the test machine; the S3 form is tested against moto's S3 server, a real HTTP peer
speaking the S3 protocol on loopback (as the LLM path is tested against a fake OpenAI server): s3fs signs, uploads,
lists, copies and deletes over HTTP exactly as against AWS or MinIO. What it cannot show is a real store's
consistency and latency.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.config import load_settings
from rag.storage import Storage, storage_key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, with a bucket `uploads`."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    import boto3

    boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket="uploads")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> str:
    """The standard AWS variables pointing s3fs at the test server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from fsspec import filesystem

    filesystem("s3").clear_instance_cache()
    return s3_endpoint


def _roundtrip(store: Storage, reader: Storage) -> None:
    staged = store.stage(io.BytesIO(b"%PDF-1.4 quarterly figures"), "Report.PDF")
    assert staged.key == storage_key(staged.content_hash, "x.pdf") and staged.size == 26
    assert not store.exists(staged.key)  # only under a temporary name until published
    store.publish(staged)
    again = store.stage(io.BytesIO(b"%PDF-1.4 quarterly figures"), "copy.pdf")
    store.publish(again)  # the same bytes: one stored copy, the temporary one gone
    assert store.list_keys() == [staged.key]

    local = reader.local_path(staged.key)  # another process (or machine) reads them
    assert local.read_bytes() == b"%PDF-1.4 quarterly figures"
    sidecar = local.with_name(local.name + ".ocr.json")
    sidecar.write_text("{}")
    reader.save_derived(staged.key, sidecar)
    assert store.local_path(staged.key).with_name(local.name + ".ocr.json").exists()

    store.remove(staged.key)
    assert not store.exists(staged.key) and store.list_keys() == []
    with pytest.raises(FileNotFoundError):
        reader.clear_cache()
        reader.local_path(staged.key).read_bytes()


def test_the_data_dir_by_default(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    store = Storage(settings)
    assert store.root == str(tmp_path / "data" / "uploads") and not store.remote
    _roundtrip(store, store)


def test_a_shared_folder_serves_two_machines(tmp_path: Path) -> None:
    """Two data dirs (two machines) with one RAG_STORAGE_URL: what one stores, the other reads and removes."""
    shared = tmp_path / "nfs" / "uploads"
    one = Storage(load_settings(data_dir=tmp_path / "a", storage_url=str(shared)))
    two = Storage(load_settings(data_dir=tmp_path / "b", storage_url=f"file://{shared}"))
    _roundtrip(one, two)
    assert not (tmp_path / "a" / "uploads").exists() and not (tmp_path / "b" / "uploads").exists()


def test_s3_through_s3fs(tmp_path: Path, s3_env: str) -> None:
    one = Storage(load_settings(data_dir=tmp_path / "a", storage_url="s3://uploads/team/"))
    two = Storage(load_settings(data_dir=tmp_path / "b", storage_url="s3://uploads/team"))
    assert one.remote and one.root == "uploads/team"
    _roundtrip(one, two)


def test_unknown_stores_are_refused(tmp_path: Path) -> None:
    from rag.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        load_settings(data_dir=tmp_path, storage_url="ftp://host/x")
    assert "RAG_STORAGE_URL" in refused.value.user_message and "s3://bucket/prefix" in refused.value.user_message


@pytest.mark.milvus
def test_an_upload_through_s3_is_indexed_shown_and_removed(make_settings, embedder, s3_env: str) -> None:  # noqa: ANN001
    """The whole life of a document whose bytes live in S3: stored before its job, read by the worker from there,
    downloaded back, and removed from the bucket with the document."""
    from rag.service import RagService
    from tests.conftest import _drop

    service = RagService(make_settings(storage_url="s3://uploads/e2e"), embedder=embedder)
    try:
        text = b"The south warehouse stores the spare turbine blades. " * 20
        job = service.start_upload_job([("blades.txt", io.BytesIO(text))], owner="alice")
        done = service.wait_job(job.id, timeout=120)
        assert done.report.files[0].status == "indexed", done.report
        [record] = service.documents()
        assert service.library.storage.list_keys() == [record.stored_path]  # a key in the bucket, not a local path
        assert not (service.settings.data_dir / "uploads").exists()
        assert service.original(record.doc_id, "default") == ("blades.txt", text)
        assert service.ask("Where are the turbine blades?").sources[0].file_name == "blades.txt"
        service.delete_document(record.doc_id)
        assert service.library.storage.list_keys() == []
    finally:
        _drop(service)


def test_stored_paths_of_the_previous_release_become_keys(tmp_path: Path, database_url: str) -> None:
    """Rows written before keys named their bytes by an absolute path into `<data dir>/uploads`: revision 0006
    turns them into keys, which the store finds in the same folder."""
    import shutil

    from rag.catalog import Catalog
    from rag.database import Database
    from tests.rag.test_database import LEGACY

    data = tmp_path / "data"
    shutil.copytree(LEGACY, data)
    settings = load_settings(data_dir=data, database_url=database_url)
    with Database.open(settings) as db:
        records = Catalog(db, "documents").list(status=None)
    store = Storage(settings)
    assert len(records) == 3
    for record in records:
        assert "/" not in record.stored_path and record.stored_path in store.list_keys()
        assert store.local_path(record.stored_path).read_bytes()
