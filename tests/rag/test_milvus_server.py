"""The embedded server: idempotent start, status, authentication, restart with data kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pymilvus import MilvusClient

from rag.errors import StoreUnavailableError
from rag.milvus_server import EmbeddedMilvus, milvus_environment

pytestmark = pytest.mark.milvus


def test_start_is_idempotent_and_status_reads_the_chosen_ports(milvus_server: EmbeddedMilvus) -> None:
    first = milvus_server.start()
    again = milvus_server.start()
    assert first == again
    status = milvus_server.status()
    assert status.running and status.healthy and status.uri == first.uri


def test_authentication_is_required(milvus_server: EmbeddedMilvus) -> None:
    state = milvus_server.start()
    secret = milvus_server.base / "root.secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert MilvusClient(uri=state.uri, token=milvus_server.token).get_server_version().startswith("v2.3")
    for token in ("", "root:Milvus", "root:wrong"):
        with pytest.raises(Exception):  # noqa: B017 - pymilvus raises several types for refused auth
            MilvusClient(uri=state.uri, token=token, timeout=5).list_collections()


def test_a_second_data_dir_is_refused_clearly(tmp_path) -> None:  # noqa: ANN001
    other = EmbeddedMilvus(tmp_path / "other", start_timeout=30)
    with pytest.raises(StoreUnavailableError) as err:
        other.start()
    assert "one per machine" in err.value.user_message


@pytest.mark.restart
def test_restart_keeps_data(milvus_server: EmbeddedMilvus) -> None:
    state = milvus_server.start()
    client = MilvusClient(uri=state.uri, token=milvus_server.token)
    client.create_collection("restart_probe", dimension=4, consistency_level="Strong")
    client.insert("restart_probe", [{"id": 1, "vector": [0.1, 0.2, 0.3, 0.4]}])
    client.close()
    assert milvus_server.stop() is True
    assert not milvus_server.status().running
    assert milvus_server.stop() is False
    new = milvus_server.start()
    client = MilvusClient(uri=new.uri, token=milvus_server.token)
    try:
        client.load_collection("restart_probe")
        assert client.query("restart_probe", filter="id == 1", output_fields=["id"])[0]["id"] == 1
    finally:
        client.drop_collection("restart_probe")
        client.close()


def test_the_server_gets_only_the_environment_it_needs(tmp_path) -> None:  # noqa: ANN001
    parent = {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp",
        "LD_LIBRARY_PATH": "/opt/lib",
        "GOMAXPROCS": "2",
        "OPENAI_API_KEY": "sk-secret",
        "MILVUS_TOKEN": "root:secret",
        "APP_PASSWORD": "secret",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "HF_TOKEN": "secret",
        "LC_API_KEY": "secret",  # an allowed prefix does not let a credential through
        "MINIO_ROOT_PASSWORD": "secret",
        "PYTHONPATH": "/src",
    }
    env = milvus_environment(parent, tmp_path / "bin", 9091, tmp_path / "run")

    assert "secret" not in " ".join(env.values())
    assert set(env) == {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "GOMAXPROCS",
        "DEPLOY_MODE",
        "METRICS_PORT",
        "MILVUS_RUN_DIR",
    }
    assert env["LD_LIBRARY_PATH"] == f"{tmp_path / 'bin'}:/opt/lib"
    assert (env["DEPLOY_MODE"], env["METRICS_PORT"], env["MILVUS_RUN_DIR"]) == (
        "STANDALONE",
        "9091",
        str(tmp_path / "run"),
    )
    assert milvus_environment({}, tmp_path, 1, tmp_path)["PATH"]  # the binary is always found


def test_the_running_server_holds_no_credentials(milvus_server: EmbeddedMilvus, monkeypatch) -> None:  # noqa: ANN001
    """The shared server usually runs already, started by an earlier session; when this call starts it, the
    key set here must not reach it. Either way, nothing credential-like is in its environment."""
    import time

    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    asked = time.time()
    state = milvus_server.start()
    names = {
        entry.split(b"=", 1)[0].decode()
        for entry in Path(f"/proc/{state.pid}/environ").read_bytes().split(b"\0")
        if entry
    }
    if state.started_at >= asked:  # started by this very call
        assert "OPENAI_API_KEY" not in names
    assert not [n for n in names if re.search("KEY|TOKEN|SECRET|PASSWORD", n, re.IGNORECASE)]


def test_the_data_dir_and_secret_are_private(tmp_path) -> None:  # noqa: ANN001
    server = EmbeddedMilvus(tmp_path / "data")
    assert len(server.token) > len("root:") + 20  # creates the secret (and the folders) on first use
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    assert server.base.stat().st_mode & 0o777 == 0o700
    assert (server.base / "root.secret").stat().st_mode & 0o777 == 0o600
