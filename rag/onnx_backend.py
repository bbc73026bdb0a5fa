"""ONNX Runtime for a sentence-transformers model: built once from its local weights, cached, run without torch.

Building (`ensure_built`) needs torch, transformers, onnx and onnxruntime: the model is exported with
torch's TorchScript exporter, its BERT subgraphs fused by `onnxruntime.transformers.optimizer`
(attention, skip-layer-norm, bias-GELU) into `model.onnx`, and `model-int8.onnx` is made from that by
dynamic int8 quantisation of the MatMuls and the attention's input projection (weights per channel,
activations per batch). The first two feed-forward down-projections stay fp32: their inputs, GELU
outputs, carry the outliers that cost int8 most of its error (measured on the bundled model over 200
corpus chunks: quantising every MatMul leaves a worst cosine to fp32 of 0.966; keeping those two in fp32,
0.990, for about a tenth of the int8 gain; with the attention projection quantised too, 0.9937 mean and
0.9835 worst over 614 chunks).

Running (`OnnxModel`) needs only onnxruntime, tokenizers and numpy: the model's own tokenizer.json
(truncated to the model's max_seq_length, padded per batch), the session, the pooling the model's
sentence-transformers config names (mean over the attention mask for all-MiniLM-L6-v2), and L2
normalisation, as the torch path does.

The cache lives in `<RAG_MODEL_CACHE or data_dir/models>/<name>-<key>/`, where the key hashes the
model's weight, config and
tokenizer files and the versions of the exporting libraries, so a changed model or toolchain gets a new
build. A build happens in a temporary folder under a file lock and is renamed into place when complete,
so no process ever sees half a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from rag.errors import BackendUnavailableError

log = logging.getLogger(__name__)

Variant = Literal["onnx", "onnx-int8"]
VARIANT_FILES: dict[str, str] = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}
FORMAT = 2  # bump when the build steps change, so every cache is rebuilt
INT8_FP32_DOWN_PROJECTIONS = 2  # leading feed-forward down-projections kept in fp32 (see the module docstring)
_TOOLS = ("torch", "transformers", "onnx", "onnxruntime")
_SKIPPED = {"README.md", ".gitattributes", "data_config.json"}  # documentation, not the model
_SKIPPED_DIRS = {"onnx", "openvino", ".git"}  # other formats some repositories ship beside the weights


@dataclass(frozen=True)
class Pipeline:
    """What sentence-transformers does around the transformer, read from the model folder's own config."""

    max_seq_length: int
    do_lower_case: bool
    pooling: str
    dim: int


def read_pipeline(model_dir: Path) -> Pipeline:
    """The model's tokenizer window, pooling and dimension; refuses pipelines this backend cannot reproduce."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackendUnavailableError(f"{model_dir} is not a sentence-transformers model folder: {exc}") from exc
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise BackendUnavailableError(f"unsupported sentence-transformers modules {kinds}")
    if modules[0].get("path"):
        raise BackendUnavailableError("the transformer lives in a subfolder; only root-level models are exported")
    if not (model_dir / "tokenizer.json").is_file():
        raise BackendUnavailableError("the model has no tokenizer.json (a fast tokenizer is needed)")
    pooling_config = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
    keys = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}
    modes = [mode for mode, key in keys.items() if pooling_config.get(key)]
    others = [k for k, v in pooling_config.items() if k.startswith("pooling_mode") and v]
    if len(modes) != 1 or len(others) != 1:
        raise BackendUnavailableError(f"unsupported pooling {others}")
    window = int(st_config.get("max_seq_length") or config.get("max_position_embeddings", 512))
    return Pipeline(
        max_seq_length=min(window, int(config.get("max_position_embeddings", window))),
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        pooling=modes[0],
        dim=int(pooling_config.get("word_embedding_dimension") or config["hidden_size"]),
    )


# -- the cache key ----------------------------------------------------------------------------------
def _model_files(model_dir: Path) -> list[Path]:
    files = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if path.is_file() and path.name not in _SKIPPED and not (set(rel.parts[:-1]) & _SKIPPED_DIRS):
            files.append(path)
    return files


def _file_digest(path: Path, memo: dict[str, str]) -> str:
    """sha256 of a file, remembered by path, size and mtime so a start does not reread 90 MB of weights."""
    stat = path.stat()
    stamp = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if stamp not in memo:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        memo[stamp] = digest.hexdigest()
    return memo[stamp]


def tool_versions() -> dict[str, str]:
    """Versions of the exporting and running libraries (read from metadata: nothing is imported)."""
    found = {}
    for name in _TOOLS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def model_key(model_dir: Path, cache_root: Path) -> str:
    """A short hash of the model's files and the toolchain: a new key means a new build."""
    memo_path = cache_root / "digests.json"
    try:
        memo: dict[str, str] = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    known = len(memo)
    key = hashlib.sha256(f"format={FORMAT}".encode())
    for path in _model_files(model_dir):
        key.update(f"{path.relative_to(model_dir)}={_file_digest(path, memo)}\n".encode())
    for name, ver in sorted(tool_versions().items()):
        key.update(f"{name}={ver}\n".encode())
    if len(memo) != known:
        _write_json_atomic(memo_path, memo)
    return key.hexdigest()[:16]


def cache_dir(model_dir: Path, cache_root: Path, name: str = "") -> Path:
    """Where this model's build lives (it may not exist yet): `<cache_root>/<name>-<key>`."""
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (name or model_dir.name))[:40]
    return cache_root / f"{name}-{model_key(model_dir, cache_root)}"


def _write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


# -- building ---------------------------------------------------------------------------------------
def ensure_built(model_dir: Path, cache_root: Path, name: str = "") -> Path:
    """The folder holding this model's ONNX builds, building it first if needed (under a file lock)."""
    from filelock import FileLock

    pipeline = read_pipeline(model_dir)
    _require("onnxruntime")
    target = cache_dir(model_dir, cache_root, name)
    if (target / "manifest.json").is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=900):
        if (target / "manifest.json").is_file():  # another process built it while we waited
            return target
        for name in ("torch", "transformers", "onnx"):
            _require(name)
        scratch = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-", dir=cache_root))
        try:
            started = time.perf_counter()
            _build(model_dir, pipeline, scratch)
            manifest = {
                "format": FORMAT,
                "source": str(model_dir),
                "pipeline": pipeline.__dict__,
                "versions": tool_versions(),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.perf_counter() - started, 1),
                "int8_fp32_down_projections": INT8_FP32_DOWN_PROJECTIONS,
            }
            (scratch / "manifest.json").write_text(json.dumps(manifest, indent=2))  # written last: the marker
            scratch.chmod(0o755)  # mkdtemp makes it private; the models are no secret
            os.replace(scratch, target)
        except BackendUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - any export or optimiser failure means "no ONNX here"
            raise BackendUnavailableError(f"building the ONNX model failed: {exc}") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        _prune_stale(target)
        log.info("built ONNX models for %s in %s", model_dir.name, target)
    return target


def _require(name: str) -> None:
    import importlib.util

    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (tests) says "missing"
        found = False
    if not found:
        raise BackendUnavailableError(f"the package {name} is not installed")


def _prune_stale(current: Path) -> None:
    """Builds of the same model under older keys are dead weight once a new one exists."""
    prefix = current.name.rsplit("-", 1)[0] + "-"
    for other in current.parent.glob(prefix + "*"):
        if other != current and other.is_dir() and len(other.name) == len(current.name):
            shutil.rmtree(other, ignore_errors=True)
            Path(f"{other}.lock").unlink(missing_ok=True)


def _build(model_dir: Path, pipeline: Pipeline, out: Path) -> None:
    raw = out / "raw.onnx"
    inputs, config = _export(model_dir, raw)
    _optimize(raw, out / VARIANT_FILES["onnx"], config)
    raw.unlink()
    _quantize(out / VARIANT_FILES["onnx"], out / VARIANT_FILES["onnx-int8"])
    shutil.copy(model_dir / "tokenizer.json", out / "tokenizer.json")
    (out / "inputs.json").write_text(json.dumps(inputs))


def _export(model_dir: Path, path: Path) -> tuple[list[str], dict[str, Any]]:
    """Trace the transformer (eager attention, so the optimiser recognises it) with dynamic batch and length."""
    import inspect

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters and getattr(model.config, "type_vocab_size", 0):
        names.append("token_type_ids")

    class _Hidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, args))).last_hidden_state

    sample = tuple(torch.ones(2, 16, dtype=torch.long) for _ in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    # The tracer's warnings (deprecations, shapes it treats as constants) are about its internals; the
    # exported graph is checked against torch on real text in tests/rag/test_embeddings.py.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Hidden(model),
            sample,
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return names, model.config.to_dict()


def _optimize(raw: Path, path: Path, config: dict[str, Any]) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(raw),
        model_type="bert",
        num_heads=int(config.get("num_attention_heads", 0)),
        hidden_size=int(config.get("hidden_size", 0)),
    )
    fused = optimized.get_fused_operator_statistics()
    log.info("ONNX fusions: %s", {k: v for k, v in fused.items() if v})
    optimized.save_model_to_file(str(path))


def _quantize(fp32: Path, path: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32), load_external_data=False).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    down = [n.name for n in graph.node if n.op_type == "MatMul" and made_by.get(n.input[0], "").endswith("Gelu")]
    quantize_dynamic(
        str(fp32),
        str(path),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Attention"],
        nodes_to_exclude=down[:INT8_FP32_DOWN_PROJECTIONS],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused contrib ops have no inferred types
    )


# -- running ----------------------------------------------------------------------------------------
def available_providers() -> list[str]:
    """ONNX Runtime's execution providers here (raises BackendUnavailableError without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError("the package onnxruntime is not installed") from exc
    return list(onnxruntime.get_available_providers())


def cpu_threads() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OnnxModel:
    """One built variant of the model in an ONNX Runtime session, with its tokenizer and pooling."""

    def __init__(
        self, folder: Path, variant: Variant, use_gpu: bool = True, batch_size: int = 16, threads: int | None = None
    ) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BackendUnavailableError(f"a runtime package is missing: {exc}") from exc
        manifest = json.loads((folder / "manifest.json").read_text())
        self.folder, self.variant, self.batch_size = folder, variant, max(1, batch_size)
        self.pipeline = Pipeline(**manifest["pipeline"])
        self.input_names: list[str] = json.loads((folder / "inputs.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.pipeline.max_seq_length)
        padding = self.tokenizer.padding or {}
        self.tokenizer.enable_padding(
            pad_id=padding.get("pad_id", 0), pad_type_id=padding.get("pad_type_id", 0),
            pad_token=padding.get("pad_token", "[PAD]"),
        )  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads that spin between operators burn the core a neighbour needs (reading, Milvus, another
        # process) and stall when it preempts them: measured on 2 cores under load, int8 at 1.93x torch
        # fp32 without spinning against 1.71x with it (BENCHMARKS.md, "Embedding backends").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        # int8 MatMulInteger is a CPU kernel; the fp32 graph runs on a GPU when ONNX Runtime has one.
        if use_gpu and variant == "onnx" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(
                str(folder / VARIANT_FILES[variant]), sess_options=options, providers=providers
            )
        except Exception as exc:  # noqa: BLE001 - a corrupt or incompatible file
            raise BackendUnavailableError(f"ONNX Runtime cannot load {folder / VARIANT_FILES[variant]}: {exc}") from exc
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def encode(self, texts: Sequence[str]) -> Any:
        """Unit vectors (a float32 numpy array, one row per text), as sentence-transformers computes them.

        More texts than a batch run as batches of similar length: a batch is padded to its longest text, so
        one batch of a retrieval-only answer's 127 sentences (one of 132 tokens, most under 30) took 3.7 s
        here against 1.1 s sorted into batches of 16.
        """
        import numpy as np

        if len(texts) <= self.batch_size:
            return self._encode_batch(texts)
        vectors = np.empty((len(texts), self.pipeline.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            vectors[rows] = self._encode_batch([texts[i] for i in rows])
        return vectors

    def _encode_batch(self, texts: Sequence[str]) -> Any:
        import numpy as np

        if not texts:
            return np.zeros((0, self.pipeline.dim), dtype=np.float32)
        if self.pipeline.do_lower_case:
            texts = [t.lower() for t in texts]
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.asarray([e.type_ids for e in encodings], dtype=np.int64)
        hidden = self.session.run(None, feeds)[0]
        if self.pipeline.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pipeline.pooling == "max":
            pooled = np.where(mask[..., None] > 0, hidden, -1e9).max(axis=1)
        else:
            weights = mask[..., None].astype(hidden.dtype)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
