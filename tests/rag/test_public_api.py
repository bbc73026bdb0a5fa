"""The package's public surface: a sorted, complete __all__, and no UI dependency."""

from __future__ import annotations

import re
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


def test_streamlit_does_not_collect_garbage_after_every_run() -> None:
    """Streamlit's default gc.collect(2) after each run (the upload panel reruns every second) cost the Upload
    page a quarter of its server's time during indexing (BENCHMARKS.md, "Upload page against the CLI")."""
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["runner"]["postScriptGC"] is False


def test_pages_ui_and_cli_use_only_the_public_surface() -> None:
    """The pages, the CLI, the HTTP API and the MCP server are four thin clients of one surface."""
    faces = [REPO / "rag" / name for name in ("cli.py", "api.py", "mcp_server.py")]
    files = [*(REPO / "pages").glob("*.py"), *(REPO / "ui").glob("*.py"), REPO / "app.py", *faces]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from rag\.\w|import rag\.)", text, re.M), path.name


def test_every_public_name_is_in_the_type_checking_imports() -> None:
    text = (REPO / "rag" / "__init__.py").read_text(encoding="utf-8")
    hidden = text.split("if TYPE_CHECKING:", 1)[1]
    for name in rag.__all__:
        assert re.search(rf"\b{name}\b", hidden), name


def test_the_ui_uses_no_streamlit_internals() -> None:
    files = [*(REPO / "pages").glob("*.py"), *(REPO / "ui").glob("*.py"), REPO / "app.py"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for banned in ("inspect.signature", "PagesManager", "streamlit.runtime", "uses_pages_directory"):
            assert banned not in text, (path.name, banned)


def test_the_readme_map_names_every_module() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    for folder in ("rag", "ui"):
        for path in (REPO / folder).glob("*.py"):
            if path.name not in ("__main__.py",) and not (folder == "ui" and path.name == "__init__.py"):
                assert f"{folder}/{path.name}" in section, f"{folder}/{path.name} is missing from README's map"
    for path in (REPO / "pages").glob("*.py"):
        assert path.stem in section, f"pages/{path.name} is missing from README's map"
