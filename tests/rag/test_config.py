from pathlib import Path

import pytest

from rag.config import load_settings
from rag.errors import ConfigError


def test_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.embedded_milvus and not s.llm_enabled and s.collection == "documents"
    monkeypatch.setenv("MILVUS_URI", "http://db:19530")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    monkeypatch.setenv("RAG_DATA_DIR", "/tmp/x")
    s = load_settings()
    assert s.milvus_uri == "http://db:19530" and not s.embedded_milvus and s.llm_enabled
    assert s.data_dir == Path("/tmp/x")
    assert "sk-secret-value" not in str(s.public_dict()) and "sk-secret-value" not in repr(s)


def test_lite_uri_and_overrides() -> None:
    s = load_settings(milvus_uri="./x.db", top_k=3)
    assert s.milvus_lite and s.top_k == 3


@pytest.mark.parametrize(
    "bad", [{"top_k": 0}, {"collection": "no spaces allowed"}, {"chunk_size": 64, "chunk_overlap": 64}]
)
def test_invalid_settings_raise_config_error(bad: dict) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**bad)
    assert "configuration" in err.value.user_message.lower() or "RAG_CHUNK_OVERLAP" in err.value.user_message
