from pathlib import Path

import pytest

from rag.config import load_settings, private_dir, private_file, redact_url
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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:s3cret@127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
        ("https://bob@llm.example/v1", "https://llm.example/v1"),
        ("http://u:p@[::1]:8080/v1", "http://[::1]:8080/v1"),
        ("https://llm.example/v1?api_key=s3cret&region=eu", "https://llm.example/v1?api_key=***&region=eu"),
        ("http://u:s3cret@host:bad/v1", "http://host:bad/v1"),  # a malformed port still loses its password
        ("http://user:pa/ss@host:9/v1", "http://host:9/v1"),  # a password with an unencoded `/`
        ("http://user:p@ss@host/v1", "http://host/v1"),  # ... with an `@`
        ("http://user:pa:ss@host/v1", "http://host/v1"),  # ... with a `:`
        ("http://user:pa?ss@host/v1", "http://host/v1"),  # ... with a `?`
        ("http://user:pa#ss@host/v1", "http://host/v1"),  # ... with a `#`
        ("http://:s3cret@host/v1", "http://host/v1"),  # a password without a user
        ("http://us%40er:p%2Fw@host/v1", "http://host/v1"),  # percent-encoded
        ("//u:s3cret@host/v1", "//host/v1"),  # no scheme
        ("root:s3cret@db:19530", "db:19530"),  # not even `//`
        ("https://h/v1#access_token=s3cret", "https://h/v1#access_token=***"),
        ("http://localhost:11434/v1", "http://localhost:11434/v1"),
        ("./data/milvus.db", "./data/milvus.db"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_public_dict_shows_urls_without_credentials() -> None:
    s = load_settings(openai_base_url="http://user:s3cret@127.0.0.1:9/v1", milvus_uri="https://root:s3cret@db:19530")
    shown = s.public_dict()
    assert shown["openai_base_url"] == "http://127.0.0.1:9/v1" and shown["milvus_uri"] == "https://db:19530"
    assert "s3cret" not in str(shown)


def test_max_running_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().max_running_jobs == 2
    monkeypatch.setenv("RAG_MAX_RUNNING_JOBS", "3")
    assert load_settings().max_running_jobs == 3
    with pytest.raises(ConfigError):
        load_settings(max_running_jobs=0)


def test_private_dir_and_file(tmp_path: Path) -> None:
    folder = private_dir(tmp_path / "a" / "data")
    assert folder.stat().st_mode & 0o777 == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    assert private_dir(loose).stat().st_mode & 0o777 == 0o700  # an existing folder is tightened
    made = private_file(folder / "db.sqlite3")
    assert made.stat().st_mode & 0o777 == 0o600 and made.read_bytes() == b""
    shared = tmp_path / "shared.txt"
    shared.write_text("kept")
    shared.chmod(0o644)
    assert private_file(shared).stat().st_mode & 0o777 == 0o600 and shared.read_text() == "kept"


def test_llm_models_is_a_list_that_must_hold_llm_model(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().llm_choices == ("gpt-4o-mini",)  # empty LLM_MODELS: LLM_MODEL alone
    monkeypatch.setenv("LLM_MODEL", "llama3.1:8b")
    monkeypatch.setenv("LLM_MODELS", " llama3.1:8b, qwen2.5:7b ,llama3.1:8b,")
    settings = load_settings()
    assert settings.llm_choices == ("llama3.1:8b", "qwen2.5:7b")
    assert settings.public_dict()["llm_models"] == "llama3.1:8b, qwen2.5:7b"
    monkeypatch.setenv("LLM_MODELS", '["qwen2.5:7b", "llama3.1:8b"]')
    assert load_settings().llm_choices == ("qwen2.5:7b", "llama3.1:8b")
    monkeypatch.setenv("LLM_MODELS", "qwen2.5:7b")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.user_message == (
        "Invalid configuration: LLM_MODEL 'llama3.1:8b' is not one of LLM_MODELS (qwen2.5:7b); "
        "add it to LLM_MODELS or choose one of them"
    )


def test_limits_of_what_one_file_may_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.max_pages, s.max_page_pixels, s.ocr_page_seconds) == (1000, 20_000_000, 180.0)
    monkeypatch.setenv("RAG_MAX_PAGES", "50")
    monkeypatch.setenv("RAG_MAX_PAGE_PIXELS", "8000000")
    monkeypatch.setenv("RAG_OCR_PAGE_SECONDS", "30")
    s = load_settings()
    assert (s.max_pages, s.max_page_pixels, s.ocr_page_seconds) == (50, 8_000_000, 30.0)
    monkeypatch.setenv("RAG_MAX_PAGE_PIXELS", "1000")  # too small to draw any page
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "RAG_MAX_PAGE_PIXELS" in err.value.user_message
