"""The engine behind the app: async ingestion and question answering over Milvus.

Pages, `ui/` and the CLI import only these names (a test enforces it); every other module is internal.

Who is calling: every `RagService` method that reads or changes a workspace takes `caller=` (a `Caller`:
`Caller.of(account)`, `Caller.anonymous()` while no account exists, or `Caller.operator()` for the local
command line, the default) and enforces the caller's role there (`rag.access`: viewer, editor, owner; admins
manage shared workspaces, roles and accounts). An API or MCP server passes the caller it authenticated and gets
the same rules as the pages: `AccessDeniedError` or `WorkspaceNotFoundError` (which never names what the caller
may not see), each with a message for people. The engine's tables live in `Database` (SQLite in the data dir,
or PostgreSQL: RAG_DATABASE_URL), migrated at start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives. Names load on first use (PEP 562), so `python -m rag docs list` does not pay
# for LlamaIndex, torch and pymilvus, which only the commands that need them import.
_LOCATIONS = {
    "BENCH_MODES": "rag.bench",
    "EXPERIMENTS": "rag.bench",
    "MILVUS_EXPERIMENTS": "rag.bench",
    "RETRIEVAL_MODES": "rag.options",
    "RETRIEVAL_ONLY_NOTE": "rag.query",
    "SUPPORTED_EXTENSIONS": "rag.readers",
    "ROLES": "rag.schema",
    "AccessDeniedError": "rag.errors",
    "Account": "rag.accounts",
    "AccountError": "rag.errors",
    "AccountNotFoundError": "rag.errors",
    "Accounts": "rag.accounts",
    "Answer": "rag.query",
    "AnswerStream": "rag.query",
    "AskOptions": "rag.options",
    "BenchConfig": "rag.bench",
    "BenchReport": "rag.bench",
    "BenchRow": "rag.bench",
    "BenchmarkBusyError": "rag.errors",
    "Caller": "rag.access",
    "ChatTurn": "rag.query",
    "CheckReport": "rag.documents",
    "CollectionNotFoundError": "rag.errors",
    "ConfigError": "rag.errors",
    "ConversationStore": "rag.conversations",
    "Database": "rag.database",
    "DocumentBusyError": "rag.errors",
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
    "Finding": "rag.documents",
    "IngestError": "rag.errors",
    "IngestReport": "rag.ingest",
    "JobCancelledError": "rag.errors",
    "JobSnapshot": "rag.jobs",
    "JobState": "rag.jobs",
    "LoginError": "rag.errors",
    "LoginThrottledError": "rag.errors",
    "Member": "rag.workspaces",
    "ModelError": "rag.errors",
    "OperationTimeoutError": "rag.errors",
    "Preparation": "rag.embeddings",
    "QAPair": "rag.evaluate",
    "QuestionService": "rag.questions",
    "RagError": "rag.errors",
    "RagService": "rag.service",
    "RenderedPage": "rag.sources",
    "Retrieval": "rag.options",
    "Runtime": "rag.runtime",
    "ServiceStatus": "rag.service",
    "Settings": "rag.config",
    "Source": "rag.query",
    "Stage": "rag.ingest",
    "StoreUnavailableError": "rag.errors",
    "StoredTurn": "rag.conversations",
    "Workspace": "rag.workspaces",
    "WorkspaceError": "rag.errors",
    "WorkspaceNotFoundError": "rag.errors",
    "aiter_bench": "rag.bench",
    "check_documents": "rag.documents",
    "default_corpus_dir": "rag.bench",
    "describe_embedding": "rag.embeddings",
    "escape_markdown": "rag.markdown",
    "escape_math": "rag.markdown",
    "list_documents": "rag.documents",
    "load_settings": "rag.config",
    "neutralize_markdown": "rag.markdown",
    "parse_pairs": "rag.evaluate",
    "plan": "rag.bench",
    "prepare_backend": "rag.embeddings",
    "redact_url": "rag.config",
}

__all__ = [
    "BENCH_MODES",
    "EXPERIMENTS",
    "MILVUS_EXPERIMENTS",
    "RETRIEVAL_MODES",
    "RETRIEVAL_ONLY_NOTE",
    "ROLES",
    "SUPPORTED_EXTENSIONS",
    "AccessDeniedError",
    "Account",
    "AccountError",
    "AccountNotFoundError",
    "Accounts",
    "Answer",
    "AnswerStream",
    "AskOptions",
    "BenchConfig",
    "BenchReport",
    "BenchRow",
    "BenchmarkBusyError",
    "Caller",
    "ChatTurn",
    "CheckReport",
    "CollectionNotFoundError",
    "ConfigError",
    "ConversationStore",
    "Database",
    "DocumentBusyError",
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
    "Finding",
    "IngestError",
    "IngestReport",
    "JobCancelledError",
    "JobSnapshot",
    "JobState",
    "LoginError",
    "LoginThrottledError",
    "Member",
    "ModelError",
    "OperationTimeoutError",
    "Preparation",
    "QAPair",
    "QuestionService",
    "RagError",
    "RagService",
    "RenderedPage",
    "Retrieval",
    "Runtime",
    "ServiceStatus",
    "Settings",
    "Source",
    "Stage",
    "StoreUnavailableError",
    "StoredTurn",
    "Workspace",
    "WorkspaceError",
    "WorkspaceNotFoundError",
    "aiter_bench",
    "check_documents",
    "default_corpus_dir",
    "describe_embedding",
    "escape_markdown",
    "escape_math",
    "list_documents",
    "load_settings",
    "neutralize_markdown",
    "parse_pairs",
    "plan",
    "prepare_backend",
    "redact_url",
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
    from rag.access import Caller
    from rag.accounts import Account, Accounts
    from rag.bench import (
        BENCH_MODES,
        EXPERIMENTS,
        MILVUS_EXPERIMENTS,
        BenchConfig,
        BenchReport,
        BenchRow,
        aiter_bench,
        default_corpus_dir,
        plan,
    )
    from rag.catalog import DocumentRecord
    from rag.config import Settings, load_settings, redact_url
    from rag.conversations import ConversationStore, StoredTurn
    from rag.database import Database
    from rag.documents import CheckReport, Finding, check_documents, list_documents
    from rag.embeddings import Preparation, describe_embedding, prepare_backend
    from rag.errors import (
        AccessDeniedError,
        AccountError,
        AccountNotFoundError,
        BenchmarkBusyError,
        CollectionNotFoundError,
        ConfigError,
        DocumentBusyError,
        DocumentNotFoundError,
        EmbeddingMismatchError,
        EvalFileError,
        IngestError,
        JobCancelledError,
        LoginError,
        LoginThrottledError,
        ModelError,
        OperationTimeoutError,
        RagError,
        StoreUnavailableError,
        WorkspaceError,
        WorkspaceNotFoundError,
    )
    from rag.evaluate import EvalReport, EvalRow, QAPair, parse_pairs
    from rag.ingest import FileProgress, FileResult, FileStatus, IngestReport, Stage
    from rag.jobs import JobSnapshot, JobState
    from rag.markdown import escape_markdown, escape_math, neutralize_markdown
    from rag.milvus_server import EmbeddedMilvus
    from rag.options import RETRIEVAL_MODES, AskOptions, Retrieval
    from rag.query import RETRIEVAL_ONLY_NOTE, Answer, AnswerStream, ChatTurn, Source
    from rag.questions import QuestionService
    from rag.readers import SUPPORTED_EXTENSIONS
    from rag.runtime import Runtime
    from rag.schema import ROLES
    from rag.service import RagService, ServiceStatus
    from rag.sources import RenderedPage
    from rag.workspaces import Member, Workspace
