"""Helpers for the AppTest suites: the app under test in one browser session, and what it rendered."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from streamlit.testing.v1 import AppTest

from rag.service import RagService

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app.py"


@dataclass
class AppEnv:
    """Where the app under test keeps its things, and its session id."""

    data_dir: Path
    collection: str
    sid: str

    def app(self, page: str | None = None, sid: str | None = None) -> AppTest:
        """An AppTest of app.py on `page` (e.g. "pages/chat.py"), in browser session `sid`."""
        at = AppTest.from_file(str(APP), default_timeout=180)
        at.query_params["sid"] = sid or self.sid
        if page:
            at.switch_page(page)
        return at

    def service(self) -> RagService:
        """The very RagService the pages use (st.cache_resource is process-wide)."""
        from ui.resources import get_service

        return get_service()


def write_doc(folder: Path, name: str, text: str) -> Path:
    """A UTF-8 text document `name` in `folder` (created if needed), to upload or ingest."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def new_sid() -> str:
    """A session id in the app's format."""
    return uuid.uuid4().hex


def page_text(at: AppTest) -> str:
    """Everything an AppTest run rendered, as one string (element protos, including table data)."""
    parts: list[str] = []

    def walk(node: object) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        children = getattr(node, "children", None)
        if isinstance(children, dict):
            for child in children.values():
                walk(child)

    walk(at._tree)
    return "\n".join(parts)
