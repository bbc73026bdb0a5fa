"""Which Milvus to use, what it can do, what our collections look like in it, and its failures as RagErrors.

Everything here speaks to the server below the engine's notions of documents and searches: the `DocumentStore`
(`rag.store`) and the searches (`rag.search`) stand on `MilvusCollection`, whose retry policy turns transient
failures (mapped in `map_milvus_errors`) into retries with backoff, loading a collection found unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential

from rag.config import Settings
from rag.errors import CollectionNotLoadedError, RagError, StoreUnavailableError, TransientStoreError
from rag.milvus_server import EmbeddedMilvus

TEXT_FIELD = "text"
SPARSE_FIELD = "sparse_embedding"
EMBEDDING_FIELD = "embedding"
DOC_ID_FIELD = "doc_id"
WORKSPACE_FIELD = "workspace"
MODEL_KEY = "embed_model"
# Milvus 2.3 leaves dynamic fields out of "*", so name the ones a search must return.
OUTPUT_FIELDS = ("_node_content", "_node_type", "file_name", "page", "doc_id", "chunk")
# The embedding index of collections created from now on, chosen on the scale curve (BENCHMARKS.md, "Scale"):
# HNSW finds 97.5-99% of the exact 10 nearest chunks at ef 64-128 in 8 ms where the exact (FLAT) search of the
# same 100,000 chunks takes 58 ms, and its cost grows with the logarithm of a segment's size, not linearly.
DENSE_INDEX = {"index_type": "HNSW", "M": 16, "efConstruction": 200}


@dataclass(frozen=True)
class Connection:
    """Where the store connects, and what kind of Milvus it is."""

    uri: str
    token: str
    kind: str  # embedded, external or lite


@dataclass(frozen=True)
class StoreInfo:
    """What the home page and `milvus status` show about the connected Milvus."""

    uri: str
    kind: str
    version: str
    collection: str
    chunks: int


@dataclass(frozen=True)
class Features:
    """What the connected server and collection can do; `reason` says why the server's BM25 is not used."""

    version: str
    keyword_search: bool
    reason: str | None = None
    keyword_backend: str | None = None  # "milvus" (the server's BM25 function) or "local" (rag.keyword)
    keyword_where: str = "a local SQLite FTS5 index beside Milvus"  # for "local": the index's own describe()

    @property
    def retrieval_modes(self) -> tuple[str, ...]:
        """The retrieval modes this collection supports."""
        return ("dense", "keyword", "hybrid") if self.keyword_search else ("dense",)

    @property
    def keyword_note(self) -> str:
        """Where keyword search runs, for people."""
        if self.keyword_backend == "milvus":
            return f"Keyword (BM25) search runs in Milvus {self.version}."
        if self.keyword_backend == "local":
            return f"Keyword (BM25) search runs in {self.keyword_where} ({self.reason})."
        return f"Keyword search is unavailable: {self.reason}"


def _version_tuple(version: str) -> tuple[int, int]:
    match = re.search(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def probe_features(connection: Connection, collection: str, overwrite: bool = False) -> Features:
    """Ask the server its version and whether the collection has (or may get) a BM25 field."""
    from pymilvus import MilvusClient

    with map_milvus_errors("report its version"):
        client = MilvusClient(uri=connection.uri, token=connection.token, timeout=30)
        try:
            version = str(client.get_server_version())
            exists = not overwrite and client.has_collection(collection)
            fields = client.describe_collection(collection)["fields"] if exists else []
        finally:
            client.close()
    return server_features(connection, collection, version, exists, fields)


def server_features(
    connection: Connection, collection: str, version: str, exists: bool, fields: list[dict]
) -> Features:
    """What a server of this version can do with this collection (its fields, if it exists)."""
    lite = connection.kind == "lite" or version.startswith("milvus_lite")
    server_ok = lite or _version_tuple(version) >= (2, 5)
    if not server_ok:
        return Features(version, False, f"Milvus {version} has no BM25 function")
    if exists and not any(f["name"] == SPARSE_FIELD for f in fields):
        return Features(version, False, f"collection '{collection}' was created without a BM25 field")
    return Features(version, True, keyword_backend="milvus")


@contextlib.contextmanager
def map_milvus_errors(action: str) -> Iterator[None]:
    """Translate pymilvus and gRPC failures into RagErrors at one boundary."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except RagError:
        raise
    except asyncio.CancelledError:
        raise
    except MilvusException as exc:
        if _refused_credentials(exc):  # pymilvus says "illegal connection params or server unavailable"
            raise StoreUnavailableError(
                f"Milvus {action} failed: the server refused the credentials ({exc})",
                user_message=f"Milvus could not {action}: the server refused the credentials. Set MILVUS_TOKEN "
                "to its user:password (or API key); for the embedded server leave MILVUS_URI and MILVUS_TOKEN unset.",
            ) from exc
        text = str(exc)
        transient = any(s in text.lower() for s in ("unavailable", "connect", "deadline", "not ready", "closed"))
        cls = TransientStoreError if transient else StoreUnavailableError
        if "not loaded" in text.lower():
            cls = CollectionNotLoadedError
        raise cls(f"Milvus {action} failed: {text}", user_message=f"Milvus could not {action}: {exc.message}") from exc
    except (ConnectionError, OSError) as exc:
        raise TransientStoreError(
            f"Milvus {action} failed: {exc}", user_message=f"Milvus is unreachable ({action})."
        ) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("grpc"):
            raise TransientStoreError(
                f"Milvus {action} failed: {exc}", user_message=f"Milvus is unreachable ({action})."
            ) from exc
        raise


def _refused_credentials(exc: BaseException) -> bool:
    """Whether a gRPC UNAUTHENTICATED status lies under `exc` (pymilvus hides it behind a connection error)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # pymilvus's chains can loop back on themselves
        seen.add(id(cause))
        code = getattr(cause, "code", None)
        if (
            type(cause).__module__.startswith("grpc")
            and callable(code)
            and getattr(code(), "name", "") == "UNAUTHENTICATED"
        ):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def collection_schema(connection: Connection, name: str, dim: int, consistency_level: str) -> dict[str, Any]:
    """MilvusVectorStore arguments that fix a collection's fields and metric; the benchmarks use the same."""
    return {
        "uri": connection.uri,
        "token": connection.token,
        "collection_name": name,
        "dim": dim,
        "embedding_field": EMBEDDING_FIELD,
        "text_key": TEXT_FIELD,
        "doc_id_field": DOC_ID_FIELD,
        "similarity_metric": "COSINE",
        "consistency_level": consistency_level,
    }


def resolve_connection(settings: Settings, start: bool = True) -> Connection:
    """Pick the Milvus to use; with no MILVUS_URI, start (or reuse) the embedded server."""
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
    if settings.milvus_lite:
        return Connection(uri=settings.milvus_uri, token=token, kind="lite")
    if settings.milvus_uri:
        return Connection(uri=settings.milvus_uri, token=token, kind="external")
    server = EmbeddedMilvus(settings.data_dir, settings.milvus_start_timeout)
    if start:
        state = server.start()
    else:
        status = server.status()
        if not status.healthy or status.state is None:
            raise StoreUnavailableError(
                "embedded Milvus is not running",
                user_message="The embedded Milvus is not running: python -m rag milvus start",
            )
        state = status.state
    return Connection(uri=state.uri, token=server.token, kind="embedded")


class MilvusCollection:
    """One collection on the async client, used only from the runtime loop: its name, the retry policy, and
    whether searches are known to see every write made before."""

    def __init__(self, vector_store: Any) -> None:
        self.vector_store = vector_store  # MilvusVectorStore, or a SearchCollection
        # A fresh client reads under Session consistency as if Eventually (it has written nothing yet), and a
        # server that restarted may still be replaying recent writes: until one Strong read has returned, a
        # search could miss chunks that are indexed. `synced` is cleared by every transient failure.
        self.synced = False

    @property
    def name(self) -> str:
        """The collection name."""
        return self.vector_store.collection_name

    @property
    def aclient(self) -> Any:
        """The AsyncMilvusClient (bound to the runtime loop)."""
        return self.vector_store.aclient

    def retrying(self) -> AsyncRetrying:
        """Retry transient failures with backoff; a collection found unloaded is loaded before the retry."""

        async def _reload(state: RetryCallState) -> None:
            self.synced = False
            if isinstance(state.outcome and state.outcome.exception(), CollectionNotLoadedError):
                with contextlib.suppress(Exception):
                    await self.aclient.load_collection(self.name)

        return AsyncRetrying(
            retry=retry_if_exception_type(TransientStoreError),
            stop=stop_after_attempt(6),
            wait=wait_exponential(multiplier=0.5, max=8),
            before_sleep=_reload,
            reraise=True,
        )

    async def aload_state(self) -> str:
        """`loaded`, `loading` or `not loaded`: what a restart can leave the collection in for a while."""
        with map_milvus_errors("report the collection's state"):
            state = (await self.aclient.get_load_state(self.name)).get("state")
        name = getattr(state, "name", str(state))
        return {"Loaded": "loaded", "Loading": "loading", "NotLoad": "not loaded"}.get(name, name.lower())

    async def aversion(self) -> str:
        """The server's version string."""
        with map_milvus_errors("report its version"):
            return str(await self.aclient.get_server_version())


class SearchCollection:
    """The parts of MilvusVectorStore a search uses (`DocumentStore.aopen_for_search`), without LlamaIndex."""

    search_config: dict[str, Any] = {}  # noqa: RUF012 - MilvusVectorStore's default: the index's own parameters

    def __init__(self, aclient: Any, connection: Connection, name: str, dim: int | None) -> None:
        self.aclient, self.connection, self.collection_name, self.dim = aclient, connection, name, dim
        self._client: Any = None

    @property
    def client(self) -> Any:
        """A sync client, connected on first use (reading every row of a document pages through it)."""
        if self._client is None:
            from pymilvus import MilvusClient

            self._client = MilvusClient(uri=self.connection.uri, token=self.connection.token, timeout=30)
        return self._client

    def close(self) -> None:
        """Close the sync client if one was opened (the async one is closed by the store)."""
        if self._client is not None:
            self._client.close()


def quote(value: str) -> str:
    """A string as it goes between double quotes in a Milvus filter expression."""
    return value.replace("\\", "\\\\").replace('"', '\\"')
