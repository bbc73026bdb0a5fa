"""The embedded server: idempotent start, status, authentication, restart with data kept."""

from __future__ import annotations

import pytest
from pymilvus import MilvusClient

from rag.errors import StoreUnavailableError
from rag.milvus_server import EmbeddedMilvus

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
