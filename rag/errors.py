"""Errors the engine raises, each with a message safe to show to people.

RagError                     base: .user_message is for people; str(err) keeps technical detail
├── ConfigError              a missing or invalid setting
│   └── EmbeddingMismatchError  the collection was built with another embedding model
├── StoreUnavailableError    Milvus is unreachable, or the embedded server is not running
├── CollectionNotFoundError  the named collection does not exist
├── DocumentNotFoundError    no document has that id
├── IngestError              one file failed (.path); the batch goes on and the report lists it
├── EvalFileError            a labelled question file is malformed (.line names the line)
├── ModelError               the LLM or the embedding model failed or refused
├── JobCancelledError        an ingestion job was cancelled by its user
├── BenchmarkBusyError       a benchmark was started while another one runs
├── AccountError             an account name or password that cannot be used, or a change refused
│   └── AccountNotFoundError    no account has that name (managing accounts; a login never says so)
├── LoginError               wrong name or password: one message for both
│   └── LoginThrottledError     too many failed sign-ins; .retry_after says how many seconds to wait
├── AccessDeniedError        the caller's role does not allow this (the message names what is allowed)
├── AuthenticationError      an API or MCP call without a valid token (missing, unknown, revoked)
├── RateLimitedError         a token sent more requests than RAG_API_RATE_LIMIT allows; .retry_after
├── JobNotFoundError         no job of this caller has that id
├── UploadTooLargeError      an upload past RAG_MAX_FILE_MB or RAG_MAX_FILES (the UI's limits)
└── OperationTimeoutError    a Runtime.run call exceeded its timeout
"""

from __future__ import annotations

import math


class RagError(Exception):
    """Base of every error the engine raises on purpose."""

    default_message = "Something went wrong."

    def __init__(self, detail: str = "", *, user_message: str | None = None) -> None:
        super().__init__(detail or user_message or self.default_message)
        self.user_message = user_message or detail or self.default_message


class ConfigError(RagError):
    """Raised when a setting is missing or invalid."""

    default_message = "The configuration is invalid."


class EmbeddingMismatchError(ConfigError):
    """Raised when a collection built with one embedding model is used with another."""


class StoreUnavailableError(RagError):
    """Raised when Milvus cannot be reached or the embedded server is not running."""

    default_message = "Milvus is not reachable."


class TransientStoreError(StoreUnavailableError):
    """A failure worth retrying (server restarting, connection reset)."""


class CollectionNotLoadedError(TransientStoreError):
    """The collection is not loaded yet (as after a restart): reload it, then retry."""


class CollectionNotFoundError(RagError):
    """Raised when the named collection does not exist."""


class DocumentNotFoundError(RagError):
    """Raised when no indexed document has the given id."""


class DocumentBusyError(RagError):
    """Raised when a document cannot be changed because a writer is indexing it right now."""

    default_message = "The document is being indexed right now; try again when that has finished."


class WorkspaceError(RagError):
    """Raised for a workspace name that cannot be used (empty, too long, shaped like a path, taken)."""


class WorkspaceNotFoundError(WorkspaceError):
    """Raised when no workspace (visible to this account) has the given name."""


class IngestError(RagError):
    """Raised for one file that cannot be indexed; the rest of its batch goes on."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}", user_message=f"{path}: {reason}")
        self.path = path
        self.reason = reason


class EvalFileError(RagError):
    """Raised for a question/evidence file that cannot be evaluated; nothing is asked or changed."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        where = f"{source}, line {line}" if line else source
        super().__init__(f"{where}: {reason}", user_message=f"{where}: {reason}")
        self.line = line
        self.reason = reason


class ModelError(RagError):
    """Raised when the LLM or the embedding model fails or refuses a request."""

    default_message = "The language model failed."


class BackendUnavailableError(ModelError):
    """An embedding backend cannot run here (a package is missing, an unsupported model, a failed export);
    the engine falls back to torch with a warning, and the message says why."""


class JobCancelledError(RagError):
    """Raised inside an ingestion job that its user cancelled."""

    default_message = "The job was cancelled."


class BenchmarkBusyError(RagError):
    """Raised when a benchmark is started while another one runs (one at a time per data dir)."""

    default_message = "A benchmark is already running; try again when it has finished."


class AccountError(RagError):
    """Raised for an account name or password that cannot be used, or a change that would lock everyone out."""


class AccountNotFoundError(AccountError):
    """Raised when an account to change or remove does not exist (never by a login, which must not tell)."""


class AccessDeniedError(RagError):
    """Raised when the caller's role in a workspace (or their lack of admin rights), or an API token's limits
    (read-only, one workspace), do not allow an action."""

    default_message = "You are not allowed to do that."


class LoginError(RagError):
    """Raised when a login fails; the message is the same whether the name or the password was wrong."""

    default_message = "Wrong name or password."


class LoginThrottledError(LoginError):
    """Raised when a login is tried during the wait that earlier failures imposed; the password is not checked."""

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        if seconds < 60:
            wait = f"{seconds} second" + ("" if seconds == 1 else "s")
        else:
            minutes, rest = divmod(seconds, 60)
            wait = f"{minutes} min {rest} s" if rest else f"{minutes} min"
        super().__init__(
            f"login throttled for {retry_after:.1f} s",
            user_message=f"Too many failed sign-ins: try again in {wait}.",
        )
        self.retry_after = retry_after


class AuthenticationError(RagError):
    """Raised when an API or MCP call carries no valid token: none where one is needed, unknown, or revoked."""

    default_message = "This call needs a valid API token (Authorization: Bearer …)."


class RateLimitedError(RagError):
    """Raised when a token sends requests faster than RAG_API_RATE_LIMIT allows; .retry_after in seconds."""

    def __init__(self, retry_after: float, limit: int) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            f"rate limited for {retry_after:.2f} s",
            user_message=f"Too many requests: this token may send {limit} a minute (RAG_API_RATE_LIMIT); "
            f"try again in {seconds} s.",
        )
        self.retry_after = retry_after


class JobNotFoundError(RagError):
    """Raised when no job of this caller has the given id (another caller's job does not exist for it)."""


class UploadTooLargeError(RagError):
    """Raised for an upload past the limits the web UI applies too (RAG_MAX_FILE_MB per file, RAG_MAX_FILES)."""


class OperationTimeoutError(RagError):
    """Raised when a Runtime.run call exceeds its timeout; the work is cancelled."""

    default_message = "The operation took too long and was cancelled."
