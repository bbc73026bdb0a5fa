"""The engine behind the app: async ingestion and question answering over Milvus.

Pages and the CLI use these names; everything else is internal.
"""

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
