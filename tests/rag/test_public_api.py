"""The package's public surface: a sorted, complete __all__, and no UI dependency."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import rag
from rag.config import Settings

REPO = Path(__file__).resolve().parents[2]


def test_all_is_sorted_and_exported() -> None:
    assert rag.__all__ == sorted(rag.__all__, key=lambda n: (not n.isupper(), n))
    for name in rag.__all__:
        assert hasattr(rag, name), name


def test_importing_rag_does_not_import_streamlit() -> None:
    code = "import sys, rag; sys.exit(1 if any(m.startswith('streamlit') for m in sys.modules) else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_module_in_rag_imports_streamlit() -> None:
    for path in (REPO / "rag").glob("*.py"):
        assert "import streamlit" not in path.read_text(encoding="utf-8"), path


def test_loop_plumbing_lives_only_in_runtime() -> None:
    for path in (REPO / "rag").glob("*.py"):
        if path.name == "runtime.py":
            continue
        text = path.read_text(encoding="utf-8")
        for call in ("asyncio.run(", "run_coroutine_threadsafe", "new_event_loop", "get_event_loop", "nest_asyncio"):
            assert call not in text, (path.name, call)


def test_streamlit_upload_limit_agrees_with_the_engine() -> None:
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["maxUploadSize"] == Settings.model_fields["max_file_mb"].default
