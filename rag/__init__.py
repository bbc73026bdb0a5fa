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
    "BENCH_COUNTS": "rag.bench_options",
    "BENCH_LABELS": "rag.bench_summary",
    "BENCH_MODES": "rag.bench",
    "BENCH_PAGE_EXPERIMENTS": "rag.bench_options",
    "CONSISTENCY_LEVELS": "rag.bench_options",
    "DOCUMENTS_PAGE": "rag.documents",
    "DOCUMENT_PRIVATE": "rag.gateway",
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
    "AnswerReport": "rag.evaluate",
    "AnswerStream": "rag.query",
    "ApiToken": "rag.tokens",
    "AskOptions": "rag.options",
    "AuthenticationError": "rag.errors",
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
    "Gateway": "rag.gateway",
    "IngestError": "rag.errors",
    "IngestReport": "rag.ingest",
    "JobCancelledError": "rag.errors",
    "JobNotFoundError": "rag.errors",
    "JobSnapshot": "rag.jobs",
    "JobState": "rag.jobs",
    "LoginError": "rag.errors",
    "LoginThrottledError": "rag.errors",
    "Member": "rag.workspaces",
    "ModelError": "rag.errors",
    "OperationTimeoutError": "rag.errors",
    "Passage": "rag.sources",
    "Preparation": "rag.embeddings",
    "QAPair": "rag.evaluate",
    "QueueStatus": "rag.jobs",
    "QuestionService": "rag.questions",
    "RagError": "rag.errors",
    "RagService": "rag.service",
    "RateLimitedError": "rag.errors",
    "RemoteAccess": "rag.remote",
    "RemoteCaller": "rag.remote",
    "RenderedPage": "rag.sources",
    "Retrieval": "rag.options",
    "Runtime": "rag.runtime",
    "ServiceStatus": "rag.service",
    "WorkerInfo": "rag.jobs",
    "Settings": "rag.config",
    "Source": "rag.query",
    "Stage": "rag.ingest",
    "StoreUnavailableError": "rag.errors",
    "StoredTurn": "rag.conversations",
    "Tokens": "rag.tokens",
    "UploadTooLargeError": "rag.errors",
    "Workspace": "rag.workspaces",
    "WorkspaceError": "rag.errors",
    "WorkspaceNotFoundError": "rag.errors",
    "aiter_bench": "rag.bench",
    "bench_can_run": "rag.bench_options",
    "bench_chart_records": "rag.bench_summary",
    "bench_experiments_shown": "rag.bench_summary",
    "bench_export_records": "rag.bench_summary",
    "bench_headlines": "rag.bench_summary",
    "bench_page_config": "rag.bench_options",
    "bench_progress": "rag.bench_summary",
    "bench_records": "rag.bench_summary",
    "bench_run_caption": "rag.bench_summary",
    "bench_slow_note": "rag.bench_options",
    "bench_step_text": "rag.bench_summary",
    "bench_tables": "rag.bench_summary",
    "bench_uses_documents": "rag.bench_options",
    "check_documents": "rag.documents",
    "corpus_is_missing": "rag.bench_options",
    "create_app": "rag.api",
    "create_mcp": "rag.mcp_server",
    "default_corpus_dir": "rag.bench",
    "describe_embedding": "rag.embeddings",
    "escape_markdown": "rag.markdown",
    "escape_math": "rag.markdown",
    "list_documents": "rag.documents",
    "load_settings": "rag.config",
    "neutralize_markdown": "rag.markdown",
    "parse_pairs": "rag.evaluate",
    "plan": "rag.bench",
    "queue_status": "rag.jobs",
    "prepare_backend": "rag.embeddings",
    "redact_url": "rag.config",
    "run_stdio": "rag.mcp_server",
    "serve_http": "rag.api",
    "status_of": "rag.gateway",
}

__all__ = [
    "BENCH_COUNTS",
    "BENCH_LABELS",
    "BENCH_MODES",
    "BENCH_PAGE_EXPERIMENTS",
    "CONSISTENCY_LEVELS",
    "DOCUMENTS_PAGE",
    "DOCUMENT_PRIVATE",
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
    "AnswerReport",
    "AnswerStream",
    "ApiToken",
    "AskOptions",
    "AuthenticationError",
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
    "Gateway",
    "IngestError",
    "IngestReport",
    "JobCancelledError",
    "JobNotFoundError",
    "JobSnapshot",
    "JobState",
    "LoginError",
    "LoginThrottledError",
    "Member",
    "ModelError",
    "OperationTimeoutError",
    "Passage",
    "Preparation",
    "QAPair",
    "QuestionService",
    "QueueStatus",
    "RagError",
    "RagService",
    "RateLimitedError",
    "RemoteAccess",
    "RemoteCaller",
    "RenderedPage",
    "Retrieval",
    "Runtime",
    "ServiceStatus",
    "Settings",
    "Source",
    "Stage",
    "StoreUnavailableError",
    "StoredTurn",
    "Tokens",
    "UploadTooLargeError",
    "WorkerInfo",
    "Workspace",
    "WorkspaceError",
    "WorkspaceNotFoundError",
    "aiter_bench",
    "bench_can_run",
    "bench_chart_records",
    "bench_experiments_shown",
    "bench_export_records",
    "bench_headlines",
    "bench_page_config",
    "bench_progress",
    "bench_records",
    "bench_run_caption",
    "bench_slow_note",
    "bench_step_text",
    "bench_tables",
    "bench_uses_documents",
    "check_documents",
    "corpus_is_missing",
    "create_app",
    "create_mcp",
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
    "queue_status",
    "redact_url",
    "run_stdio",
    "serve_http",
    "status_of",
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
    from rag.api import create_app, serve_http
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
    from rag.bench_options import (
        BENCH_COUNTS,
        BENCH_PAGE_EXPERIMENTS,
        CONSISTENCY_LEVELS,
        bench_can_run,
        bench_page_config,
        bench_slow_note,
        bench_uses_documents,
        corpus_is_missing,
    )
    from rag.bench_summary import (
        BENCH_LABELS,
        bench_chart_records,
        bench_experiments_shown,
        bench_export_records,
        bench_headlines,
        bench_progress,
        bench_records,
        bench_run_caption,
        bench_step_text,
        bench_tables,
    )
    from rag.catalog import DocumentRecord
    from rag.config import Settings, load_settings, redact_url
    from rag.conversations import ConversationStore, StoredTurn
    from rag.database import Database
    from rag.documents import DOCUMENTS_PAGE, CheckReport, Finding, check_documents, list_documents
    from rag.embeddings import Preparation, describe_embedding, prepare_backend
    from rag.errors import (
        AccessDeniedError,
        AccountError,
        AccountNotFoundError,
        AuthenticationError,
        BenchmarkBusyError,
        CollectionNotFoundError,
        ConfigError,
        DocumentBusyError,
        DocumentNotFoundError,
        EmbeddingMismatchError,
        EvalFileError,
        IngestError,
        JobCancelledError,
        JobNotFoundError,
        LoginError,
        LoginThrottledError,
        ModelError,
        OperationTimeoutError,
        RagError,
        RateLimitedError,
        StoreUnavailableError,
        UploadTooLargeError,
        WorkspaceError,
        WorkspaceNotFoundError,
    )
    from rag.evaluate import AnswerReport, EvalReport, EvalRow, QAPair, parse_pairs
    from rag.gateway import DOCUMENT_PRIVATE, Gateway, status_of
    from rag.ingest import FileProgress, FileResult, FileStatus, IngestReport, Stage
    from rag.jobs import JobSnapshot, JobState, QueueStatus, WorkerInfo, queue_status
    from rag.markdown import escape_markdown, escape_math, neutralize_markdown
    from rag.mcp_server import create_mcp, run_stdio
    from rag.milvus_server import EmbeddedMilvus
    from rag.options import RETRIEVAL_MODES, AskOptions, Retrieval
    from rag.query import RETRIEVAL_ONLY_NOTE, Answer, AnswerStream, ChatTurn, Source
    from rag.questions import QuestionService
    from rag.readers import SUPPORTED_EXTENSIONS
    from rag.remote import RemoteAccess, RemoteCaller
    from rag.runtime import Runtime
    from rag.schema import ROLES
    from rag.service import RagService, ServiceStatus
    from rag.sources import Passage, RenderedPage
    from rag.tokens import ApiToken, Tokens
    from rag.workspaces import Member, Workspace
