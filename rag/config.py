"""One source of configuration: environment variables (and `.env`) with defaults, validated at start.

`load_settings()` is the only reader of the environment; everything else receives a `Settings`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rag.errors import ConfigError
from rag.options import Retrieval

Consistency = Literal["Strong", "Session", "Bounded", "Eventually"]
EmbedBackend = Literal["auto", "torch", "onnx", "onnx-int8"]


class Settings(BaseSettings):
    """Every knob of the engine; environment names are given by each field's alias."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True, populate_by_name=True
    )

    data_dir: Path = Field(
        Path("data"),
        validation_alias=AliasChoices("RAG_DATA_DIR", "data_dir"),
        description="Where uploads, the catalog, conversations and the embedded Milvus keep their files.",
    )
    database_url: str = Field(
        "",
        validation_alias=AliasChoices("RAG_DATABASE_URL", "database_url"),
        description=(
            "Where accounts, workspaces, the catalogue and conversations live. Empty: an SQLite file in "
            "RAG_DATA_DIR (nothing to install). postgresql+psycopg://user:password@host:5432/db: a PostgreSQL "
            "database shared by every app process, CLI and worker."
        ),
    )
    storage_url: str = Field(
        "",
        validation_alias=AliasChoices("RAG_STORAGE_URL", "storage_url"),
        description=(
            "Where uploaded files are kept, for every process that indexes or shows them. Empty: RAG_DATA_DIR/uploads. "
            "A path (e.g. a shared volume mounted on every machine), or s3://bucket/prefix (S3-compatible, via s3fs; "
            "credentials and endpoint from the usual AWS_* variables)."
        ),
    )
    inprocess_worker: Literal["auto", "on", "off"] = Field(
        "auto",
        validation_alias=AliasChoices("RAG_INPROCESS_WORKER", "inprocess_worker"),
        description=(
            "Whether the web app runs ingestion jobs itself. auto: yes with the embedded SQLite database, no with "
            "PostgreSQL, where `python -m rag worker` processes (on any machine) run them."
        ),
    )
    job_lease: float = Field(
        60.0,
        ge=3,
        le=3600,
        validation_alias=AliasChoices("RAG_JOB_LEASE", "job_lease"),
        description=(
            "Seconds a worker's claim on a running job lasts without renewal (renewed every sixth of it); a job whose "
            "worker stopped renewing is run again by another worker, and the worker is shown as lost."
        ),
    )
    milvus_uri: str = Field(
        "",
        validation_alias=AliasChoices("MILVUS_URI", "milvus_uri"),
        description="Empty: start the embedded Milvus server. http(s)://host:port: any Milvus. *.db: Milvus Lite.",
    )
    milvus_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("MILVUS_TOKEN", "milvus_token"),
        description="user:password or API key for an external Milvus.",
    )
    collection: str = Field(
        "documents",
        validation_alias=AliasChoices("RAG_COLLECTION", "collection"),
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
        description="Milvus collection holding the document chunks.",
    )
    workspace: str = Field(
        "default",
        validation_alias=AliasChoices("RAG_WORKSPACE", "workspace"),
        min_length=1,
        max_length=64,
        description="The workspace the CLI works in and the web app opens first.",
    )
    consistency_level: Consistency = Field(
        "Session",
        validation_alias=AliasChoices("RAG_CONSISTENCY", "consistency_level"),
        description="Consistency level of searches and of a newly created collection.",
    )
    embed_model: str = Field(
        "",
        validation_alias=AliasChoices("EMBED_MODEL", "embed_model"),
        description="sentence-transformers model name or local path; empty: the bundled all-MiniLM-L6-v2.",
    )
    embed_batch_size: int = Field(
        16,
        ge=1,
        le=1024,
        validation_alias=AliasChoices("RAG_EMBED_BATCH_SIZE", "embed_batch_size"),
        description="Chunks per embedding batch; on 2 CPU cores 8-16 beat larger batches (padding, cache).",
    )
    embed_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        validation_alias=AliasChoices("RAG_EMBED_PRECISION", "embed_precision"),
        description="torch backend: bf16 runs the model under bfloat16 autocast; auto picks it on CPUs with AMX.",
    )
    embed_backend: EmbedBackend = Field(
        "auto",
        validation_alias=AliasChoices("RAG_EMBED_BACKEND", "embed_backend"),
        description=(
            "What runs the embedding model: torch, onnx (ONNX Runtime, fused graph) or onnx-int8 (dynamic int8); "
            "auto measures them once per machine and keeps the fastest whose vectors match torch fp32."
        ),
    )
    embed_cache_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices("RAG_EMBED_CACHE_DIR", "embed_cache_dir"),
        description="Where the built ONNX models and auto's backend decision are kept; empty: <RAG_DATA_DIR>/models.",
    )
    ingest_nice: int = Field(
        10,
        ge=0,
        le=19,
        validation_alias=AliasChoices("RAG_INGEST_NICE", "ingest_nice"),
        description=(
            "How much lower the CPU priority of the threads that embed uploaded documents is (0-19; 0: the same), "
            "so that questions and Milvus are served first while an upload runs."
        ),
    )
    chunk_size: int = Field(
        256,
        ge=32,
        le=8192,
        validation_alias=AliasChoices("RAG_CHUNK_SIZE", "chunk_size"),
        description="Tokens per chunk; capped at the embedding model's maximum sequence length.",
    )
    chunk_overlap: int = Field(24, ge=0, validation_alias=AliasChoices("RAG_CHUNK_OVERLAP", "chunk_overlap"))
    insert_batch_size: int = Field(
        64, ge=1, le=10_000, validation_alias=AliasChoices("RAG_INSERT_BATCH_SIZE", "insert_batch_size")
    )
    insert_concurrency: int = Field(
        4, ge=1, le=64, validation_alias=AliasChoices("RAG_INSERT_CONCURRENCY", "insert_concurrency")
    )
    retrieval_mode: Retrieval = Field(
        "hybrid",
        validation_alias=AliasChoices("RAG_RETRIEVAL", "retrieval_mode"),
        description="dense (vectors), keyword (BM25) or hybrid (both, fused by RRF; measured best, see BENCHMARKS.md).",
    )
    top_k: int = Field(5, ge=1, le=50, validation_alias=AliasChoices("RAG_TOP_K", "top_k"))
    search_ef: int = Field(
        128,
        ge=16,
        le=4096,
        validation_alias=AliasChoices("RAG_SEARCH_EF", "search_ef"),
        description="How widely a dense search explores the HNSW index: higher finds more of the exact nearest "
        "chunks and takes longer (BENCHMARKS.md, Scale).",
    )
    context_chunks: int = Field(
        1,
        ge=0,
        le=3,
        validation_alias=AliasChoices("RAG_CONTEXT_CHUNKS", "context_chunks"),
        description="Neighbouring chunks (each side, same page) shown with every passage found; 0 shows the hit alone.",
    )
    ocr: Literal["auto", "off"] = Field(
        "auto",
        validation_alias=AliasChoices("RAG_OCR", "ocr"),
        description="auto: PDF pages with no text layer (scans) are read by OCR, offline; off: such PDFs are refused.",
    )
    openai_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"))
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"),
        description="Any OpenAI-compatible server (Ollama, vLLM, LM Studio), e.g. http://localhost:11434/v1.",
    )
    llm_model: str = Field(
        "gpt-4o-mini",
        validation_alias=AliasChoices("LLM_MODEL", "llm_model"),
        description="The model answers are written by, unless a question chooses another of LLM_MODELS.",
    )
    llm_models: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        validation_alias=AliasChoices("LLM_MODELS", "llm_models"),
        description=(
            "The models people may choose for a question, comma-separated; LLM_MODEL must be one of them. "
            "Empty: LLM_MODEL alone."
        ),
    )
    temperature: float = Field(0.1, ge=0.0, le=2.0, validation_alias=AliasChoices("RAG_TEMPERATURE", "temperature"))
    llm_timeout: float = Field(120.0, gt=0, validation_alias=AliasChoices("RAG_LLM_TIMEOUT", "llm_timeout"))
    max_file_mb: float = Field(
        50.0,
        gt=0,
        validation_alias=AliasChoices("RAG_MAX_FILE_MB", "max_file_mb"),
        description="Files larger than this are refused before reading.",
    )
    max_pages: int = Field(
        1000,
        ge=1,
        validation_alias=AliasChoices("RAG_MAX_PAGES", "max_pages"),
        description="A PDF with more pages than this is refused before any page is read.",
    )
    max_page_pixels: int = Field(
        20_000_000,
        ge=1_000_000,
        validation_alias=AliasChoices("RAG_MAX_PAGE_PIXELS", "max_page_pixels"),
        description=(
            "Most pixels a page is rendered to (source viewer, OCR); larger renders are drawn at a lower scale, "
            "and a scanned page that would need less than 72 dpi to fit is refused."
        ),
    )
    ocr_page_seconds: float = Field(
        180.0,
        gt=0,
        validation_alias=AliasChoices("RAG_OCR_PAGE_SECONDS", "ocr_page_seconds"),
        description="Most seconds OCR may spend on one page; a file with a page that takes longer fails.",
    )
    max_chunks_per_file: int = Field(
        5000,
        ge=1,
        validation_alias=AliasChoices("RAG_MAX_CHUNKS_PER_FILE", "max_chunks_per_file"),
        description="Files whose text would make more chunks than this are refused (embedding: ~40-95 chunks/s).",
    )
    app_password: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("APP_PASSWORD", "app_password"),
        description="When set, the web app asks for this password before showing anything.",
    )
    max_files: int = Field(
        200,
        ge=1,
        validation_alias=AliasChoices("RAG_MAX_FILES", "max_files"),
        description="Most files accepted in one ingestion job.",
    )
    milvus_start_timeout: float = Field(
        120.0, gt=0, validation_alias=AliasChoices("RAG_MILVUS_START_TIMEOUT", "milvus_start_timeout")
    )
    max_running_jobs: int = Field(
        2,
        ge=1,
        le=64,
        validation_alias=AliasChoices("RAG_MAX_RUNNING_JOBS", "max_running_jobs"),
        description=(
            "Most ingestion jobs running at once, for all users together; each user runs one job at a time "
            "and the others take turns (round robin)."
        ),
    )

    api_host: str = Field(
        "127.0.0.1",
        validation_alias=AliasChoices("RAG_API_HOST", "api_host"),
        description="Address `python -m rag serve` (and `mcp --http`) listens on; beyond loopback only once a token "
        "or an account exists.",
    )
    api_port: int = Field(8000, ge=1, le=65535, validation_alias=AliasChoices("RAG_API_PORT", "api_port"))
    api_rate_limit: int = Field(
        120,
        ge=0,
        validation_alias=AliasChoices("RAG_API_RATE_LIMIT", "api_rate_limit"),
        description="Requests a minute each API token may send (bursts up to as many); 0: no limit.",
    )

    mcp_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("RAG_MCP_TOKEN", "mcp_token"),
        description="`python -m rag mcp` over stdio acts as this API token's caller; unset: as the local user, "
        "like the CLI.",
    )

    @field_validator("openai_base_url", "milvus_uri", "database_url", "storage_url")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip() if isinstance(value, str) else value

    @field_validator("llm_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        """`LLM_MODELS=a,b` (or a JSON list) as a tuple of names, blanks and repeats dropped."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, list | tuple):
            return tuple(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))
        return value

    @model_validator(mode="after")
    def _model_offered(self) -> Settings:
        if self.llm_models and self.llm_model not in self.llm_models:
            raise ValueError(
                f"LLM_MODEL {self.llm_model!r} is not one of LLM_MODELS ({', '.join(self.llm_models)}); "
                "add it to LLM_MODELS or choose one of them"
            )
        return self

    @property
    def llm_choices(self) -> tuple[str, ...]:
        """The models a question may be answered by: LLM_MODELS, or LLM_MODEL alone when that is empty."""
        return self.llm_models or (self.llm_model,)

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        """Empty, sqlite:///FILE or PostgreSQL; a bare postgresql:// URL gets the psycopg 3 driver."""
        if not value:
            return value
        scheme, sep, rest = value.partition("://")
        if not sep:
            raise ValueError("expected empty, sqlite:///path/to/file or postgresql+psycopg://user:password@host/db")
        if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
            return f"postgresql+psycopg://{rest}"
        if scheme == "sqlite" and rest.startswith("/") and rest.strip("/"):
            return value
        raise ValueError(
            f"unsupported database {scheme!r}: use empty (SQLite in RAG_DATA_DIR), sqlite:///path/to/file "
            "or postgresql+psycopg://user:password@host/db"
        )

    @field_validator("storage_url")
    @classmethod
    def _storage(cls, value: str) -> str:
        """Empty, a local path (or file://), or s3://bucket[/prefix]."""
        scheme, sep, rest = value.partition("://")
        if not value or not sep or scheme == "file":
            return value
        if scheme in ("s3", "s3a") and rest.strip("/"):
            return f"s3://{rest.strip('/')}"
        raise ValueError(
            f"unsupported storage {scheme!r}: use empty (RAG_DATA_DIR/uploads), a path, or s3://bucket/prefix"
        )

    @property
    def inprocess_jobs(self) -> bool:
        """Whether the app runs ingestion jobs in its own process (RAG_INPROCESS_WORKER)."""
        if self.inprocess_worker == "auto":
            return not self.database_url.startswith("postgresql")
        return self.inprocess_worker == "on"

    @property
    def model_cache_dir(self) -> Path:
        """Where built embedding models live (RAG_EMBED_CACHE_DIR, else the data dir's models/)."""
        return Path(self.embed_cache_dir) if self.embed_cache_dir else Path(self.data_dir) / "models"

    @property
    def embedded_milvus(self) -> bool:
        """True when no MILVUS_URI is set and the embedded server is used."""
        return not self.milvus_uri

    @property
    def milvus_lite(self) -> bool:
        """True when MILVUS_URI names a local Milvus Lite file."""
        return self.milvus_uri.endswith(".db")

    @property
    def llm_enabled(self) -> bool:
        """An LLM is configured when there is an API key or an OpenAI-compatible base URL."""
        return bool(self.openai_api_key and self.openai_api_key.get_secret_value()) or bool(self.openai_base_url)

    def public_dict(self) -> dict[str, object]:
        """Settings as shown to people: secrets masked, URLs without credentials."""
        shown: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(getattr(self, name), SecretStr):
                value = "••••••" if getattr(self, name).get_secret_value() else ""
            elif name in _URL_FIELDS and isinstance(value, str):
                value = redact_url(value)
            elif isinstance(value, tuple):
                value = ", ".join(value)
            shown[name] = str(value) if isinstance(value, Path) else value
        return shown


def _readable(exc: ValidationError) -> str:
    """One line per bad setting, named by its environment variable, with the value that was given."""
    names = {
        name: next((a for a in field.validation_alias.choices if isinstance(a, str) and a.isupper()), name)
        for name, field in Settings.model_fields.items()
        if isinstance(field.validation_alias, AliasChoices)
    }
    secret = {name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)}
    secret.add("database_url")  # may hold a password
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        where = names.get(field, field)
        shown = (
            "input" in error
            and not isinstance(error["input"], dict)
            and field not in secret
            and where not in {names.get(s) for s in secret}
        )
        given = f" (got {error['input']!r})" if shown else ""
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}{given}" if where else message)  # a check across settings has no field
    return "Invalid configuration: " + "; ".join(parts)


_URL_FIELDS = ("milvus_uri", "openai_base_url", "database_url", "storage_url")
_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|auth|sig|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """A URL fit to display: no `user:password@`, and query values that look like credentials masked.

        redact_url("http://bob:s3cret@llm.example:8080/v1")  # 'http://llm.example:8080/v1'
        redact_url("http://bob:pa/ss@w:rd@llm.example/v1")    # 'http://llm.example/v1'
        redact_url("https://h/v1?api_key=sk-1&x=2")          # 'https://h/v1?api_key=***&x=2'

    A password may hold any character unencoded (`/`, `@`, `:`, `?`, `#`), so everything from `//` to the
    last `@` is taken as credentials: a URL with an `@` in its path or query is shown from after that `@`
    (it may lose a part of its path, never shows a password). Anything that is not a URL with a host
    (a Milvus Lite path, an empty value) comes back unchanged.
    """
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*:)?//", url)
    if scheme:
        head, rest = url[: scheme.end()], url[scheme.end() :]
    elif "@" in url and not url.startswith((".", "/", "~")):  # `user:password@host:port` without a scheme
        head, rest = "", url
    else:
        return url
    rest = rest[rest.rfind("@") + 1 :]
    rest, hash_mark, fragment = rest.partition("#")
    rest, question_mark, query = rest.partition("?")
    return head + rest + question_mark + _mask_params(query) + hash_mark + _mask_params(fragment)


def _mask_params(params: str) -> str:
    """`a=1&api_key=x` with the values of credential-like names masked: `a=1&api_key=***`."""
    return "&".join(
        f"{field.split('=', 1)[0]}=***" if _SECRET_PARAM.search(unquote(field.split("=", 1)[0])) else field
        for field in params.split("&")
    )


def private_dir(path: Path) -> Path:
    """Create a directory only its owner may enter (0700), or tighten an existing one we own."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _chmod(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Create a file (if missing) only its owner may read and write (0600), or tighten an existing one.

    SQLite gives its -wal and -shm files the mode of the database file, so a database created through
    this helper keeps its journal private too.
    """
    path = Path(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except FileExistsError:  # pragma: no cover - O_CREAT without O_EXCL does not raise it
        pass
    _chmod(path, 0o600)
    return path


def _chmod(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except PermissionError:  # a mounted volume owned by someone else: leave it as its owner set it
        pass


def load_settings(**overrides: object) -> Settings:
    """Read the environment once, apply explicit overrides, and fail with a readable ConfigError."""
    clean = {key: value for key, value in overrides.items() if value is not None}
    try:
        settings = Settings(**clean)
    except ValidationError as exc:
        raise ConfigError(f"Invalid configuration: {exc}", user_message=_readable(exc)) from exc
    except ValueError as exc:
        raise ConfigError(f"Invalid configuration: {exc}", user_message=f"Invalid configuration: {exc}") from exc
    if settings.chunk_overlap >= settings.chunk_size:
        raise ConfigError(
            f"RAG_CHUNK_OVERLAP ({settings.chunk_overlap}) must be smaller than RAG_CHUNK_SIZE ({settings.chunk_size})."
        )
    return settings
