"""The options of one question, as one frozen value from the UI or CLI through the service to the engine.

Kept apart from the engine so the CLI and pages can build options without importing LlamaIndex.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Retrieval = Literal["dense", "keyword", "hybrid"]
RETRIEVAL_MODES: tuple[Retrieval, ...] = ("dense", "keyword", "hybrid")


class AskOptions(BaseModel, frozen=True):
    """How one question is answered: one value carried from the UI or CLI through the service to the engine.

    Every field left as None means "as configured" (RAG_TOP_K, RAG_RETRIEVAL, LLM_MODEL, RAG_TEMPERATURE);
    `doc_ids` narrows retrieval to those documents of the workspace (by its id).
    """

    workspace: str = "default"
    top_k: int | None = Field(default=None, ge=1, le=100)
    doc_ids: tuple[str, ...] | None = None
    retrieval: Retrieval | None = None
    llm_model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
