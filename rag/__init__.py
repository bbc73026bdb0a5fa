"""The engine behind the app: async ingestion and question answering over Milvus.

Pages and the CLI use these names; everything else is internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives. Names load on first use (PEP 562), so `python -m rag docs list` does not pay
# for LlamaIndex, torch and pymilvus, which only the commands that need them import.
_LOCATIONS = {
    "RETRIEVAL_ONLY_NOTE": "rag.query",
    "Answer": "rag.query",
    "AnswerStream": "rag.service",
    "BenchConfig": "rag.bench",
    "BenchReport": "rag.bench",
    "BenchRow": "rag.bench",
    "BenchmarkBusyError": "rag.errors",
    "ChatTurn": "rag.query",
    "CollectionNotFoundError": "rag.errors",
    "ConfigError": "rag.errors",
    "DocumentNotFoundError": "rag.errors",
    "DocumentRecord": "rag.catalog",
    "EmbeddedMilvus": "rag.milvus_server",
    "EmbeddingMismatchError": "rag.errors",
    "EvalFileError": "rag.errors",
    "EvalReport": "rag.evaluate",
    "EvalRow": "rag.evaluate",
    "FileProgress": "rag.ingest",
    "FileResult": "rag.ingest",
    "FileStatus": "rag.ingest",
    "IngestError": "rag.errors",
    "IngestReport": "rag.ingest",
    "JobCancelledError": "rag.errors",
    "JobSnapshot": "rag.jobs",
    "JobState": "rag.jobs",
    "ModelError": "rag.errors",
    "OperationTimeoutError": "rag.errors",
    "QAPair": "rag.evaluate",
    "RagError": "rag.errors",
    "RagService": "rag.service",
    "Runtime": "rag.runtime",
    "ServiceStatus": "rag.service",
    "Settings": "rag.config",
    "Source": "rag.query",
    "Stage": "rag.ingest",
    "StoreUnavailableError": "rag.errors",
    "escape_markdown": "rag.query",
    "load_settings": "rag.config",
    "parse_pairs": "rag.evaluate",
}

__all__ = [
    "RETRIEVAL_ONLY_NOTE",
    "Answer",
    "AnswerStream",
    "BenchConfig",
    "BenchReport",
    "BenchRow",
    "BenchmarkBusyError",
    "ChatTurn",
    "CollectionNotFoundError",
    "ConfigError",
    "DocumentNotFoundError",
    "DocumentRecord",
    "EmbeddedMilvus",
    "EmbeddingMismatchError",
    "EvalFileError",
    "EvalReport",
    "EvalRow",
    "FileProgress",
    "FileResult",
    "FileStatus",
    "IngestError",
    "IngestReport",
    "JobCancelledError",
    "JobSnapshot",
    "JobState",
    "ModelError",
    "OperationTimeoutError",
    "QAPair",
    "RagError",
    "RagService",
    "Runtime",
    "ServiceStatus",
    "Settings",
    "Source",
    "Stage",
    "StoreUnavailableError",
    "escape_markdown",
    "load_settings",
    "parse_pairs",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module the first time it is asked for."""
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'rag' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static checkers and IDEs see the real imports
    from rag.bench import BenchConfig, BenchReport, BenchRow
    from rag.catalog import DocumentRecord
    from rag.config import Settings, load_settings
    from rag.errors import (
        BenchmarkBusyError,
        CollectionNotFoundError,
        ConfigError,
        DocumentNotFoundError,
        EmbeddingMismatchError,
        EvalFileError,
        IngestError,
        JobCancelledError,
        ModelError,
        OperationTimeoutError,
        RagError,
        StoreUnavailableError,
    )
    from rag.evaluate import EvalReport, EvalRow, QAPair, parse_pairs
    from rag.ingest import FileProgress, FileResult, FileStatus, IngestReport, Stage
    from rag.jobs import JobSnapshot, JobState
    from rag.milvus_server import EmbeddedMilvus
    from rag.query import RETRIEVAL_ONLY_NOTE, Answer, ChatTurn, Source, escape_markdown
    from rag.runtime import Runtime
    from rag.service import AnswerStream, RagService, ServiceStatus
