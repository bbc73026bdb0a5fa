"""The embedding backends: torch precision from the CPU's flags, ONNX builds that match torch fp32, the build
cache, auto's cached decision, refusal of unknown backends and the fallback to torch when one cannot be built."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rag.config import load_settings
from rag.embeddings import (
    CALIBRATION_TEXTS,
    QUALITY,
    Embedder,
    OnnxEmbedder,
    TorchEmbedder,
    _bundled_model_path,
    choose_backend,
    cosines,
    cpu_has_amx,
    load_embedder,
    load_onnx_embedder,
    load_torch_embedder,
    resolve_precision,
)
from rag.errors import BackendUnavailableError, ConfigError
from rag.ingest import _token_ids
from rag.onnx_backend import OnnxModel, ensure_built
from tests.conftest import MODEL_CACHE, REPO
from tests.rag.test_runtime import niceness

TEXTS = [
    "Giraffes eat acacia leaves on the savanna.",
    "PostgreSQL supports range, list and hash partitioning of tables.",
    "R is a language and environment for statistical computing and graphics. " * 12,
]


@pytest.fixture(scope="session")
def torch_fp32() -> TorchEmbedder:
    """The bundled model on torch in fp32: the reference every other backend is held to."""
    return load_torch_embedder(load_settings(data_dir=Path("/tmp"), embed_backend="torch"), "fp32")


@pytest.fixture(scope="session")
def onnx_embedders() -> dict[str, OnnxEmbedder]:
    """Both ONNX variants of the bundled model, exported once per test session (or reused from the cache)."""
    settings = load_settings(data_dir=Path("/tmp"), embed_cache_dir=MODEL_CACHE)
    return {variant: load_onnx_embedder(settings, variant) for variant in ("onnx", "onnx-int8")}


@pytest.fixture(scope="session")
def corpus_texts(corpus: Path) -> list[str]:
    """Real passages: the paragraphs of an essay and a README from the shared corpus, at chunk-like lengths."""
    texts = []
    for name in ("paul_graham_essay.txt", "pdfplumber_README.md"):
        paragraphs = [p.strip() for p in (corpus / name).read_text(encoding="utf-8").split("\n\n") if p.strip()]
        texts += [" ".join(paragraphs[i : i + 3]) for i in range(0, min(len(paragraphs), 60), 3)]
    return texts + TEXTS


def _tiny_model(folder: Path) -> Path:
    """A real, tiny sentence-transformers folder (random two-layer BERT, the bundled tokenizer): cheap to export."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    shutil.copy(_bundled_model_path() / "tokenizer.json", folder / "tokenizer.json")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


# -- torch ---------------------------------------------------------------------------------------
def test_amx_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    with_amx = tmp_path / "amx"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    without = tmp_path / "plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_amx(with_amx) is True
    assert cpu_has_amx(without) is False
    assert cpu_has_amx(tmp_path / "missing") is False


def test_precision_setting() -> None:
    assert resolve_precision("fp32") == "fp32"
    assert resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto") == ("bf16" if cpu_has_amx() else "fp32")
    assert load_settings(data_dir=Path("/tmp")).embed_precision == "auto"
    with pytest.raises(ConfigError, match="embed_precision"):
        load_settings(data_dir=Path("/tmp"), embed_precision="fp8")


def test_bf16_vectors_match_fp32_ones(torch_fp32: TorchEmbedder) -> None:
    fp32 = np.array(torch_fp32.embed(TEXTS))
    bf16_model = replace(torch_fp32, precision="bf16")
    bf16 = np.array(bf16_model.embed(TEXTS))
    assert bf16_model.backend == "torch-bf16" and torch_fp32.backend == "torch-fp32"
    assert fp32.shape == bf16.shape == (len(TEXTS), torch_fp32.dim)
    assert not np.array_equal(fp32, bf16)  # autocast really ran
    assert cosines(bf16, fp32).min() > 0.999
    query = bf16_model.embed_query_sync(TEXTS[0])
    assert cosines([query], fp32[:1])[0] > 0.999


# -- ONNX ----------------------------------------------------------------------------------------
def test_onnx_vectors_match_torch_fp32(
    onnx_embedders: dict[str, OnnxEmbedder], torch_fp32: TorchEmbedder, corpus_texts: list[str]
) -> None:
    reference = np.array(torch_fp32.embed(corpus_texts))
    fp32 = np.array(onnx_embedders["onnx"].embed(corpus_texts))
    int8 = np.array(onnx_embedders["onnx-int8"].embed(corpus_texts))
    assert fp32.shape == int8.shape == reference.shape == (len(corpus_texts), 384)
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)  # unit vectors, like the torch path
    assert cosines(fp32, reference).min() > 0.9999  # the same function, another runtime
    int8_cos = cosines(int8, reference)
    assert int8_cos.mean() >= QUALITY.cosine_mean and int8_cos.min() >= QUALITY.cosine_min
    assert not np.allclose(int8, fp32, atol=1e-4)  # it really is quantised
    question = onnx_embedders["onnx"].embed_query_sync(TEXTS[1])
    assert cosines([question], [torch_fp32.embed_query_sync(TEXTS[1])])[0] > 0.9999


def test_onnx_tokenizer_counts_like_the_torch_one(
    onnx_embedders: dict[str, OnnxEmbedder], torch_fp32: TorchEmbedder, corpus_texts: list[str]
) -> None:
    onnx = onnx_embedders["onnx"]
    assert (onnx.dim, onnx.max_tokens, onnx.model_id) == (torch_fp32.dim, torch_fp32.max_tokens, torch_fp32.model_id)
    long_text = " ".join(corpus_texts)  # far past the window: counting must not truncate
    for text in [*corpus_texts[:5], long_text, ""]:
        assert onnx.count_tokens(text) == torch_fp32.count_tokens(text)
        assert _token_ids(onnx.tokenizer)(text) == _token_ids(torch_fp32.tokenizer)(text)
    assert onnx.count_tokens(long_text) > 2000


def test_the_build_is_reused_and_rebuilt_when_the_model_changes(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path / "tiny")
    cache = tmp_path / "cache"

    first = ensure_built(model, cache)
    manifest = (first / "manifest.json").read_text()
    assert {p.name for p in first.iterdir()} >= {"model.onnx", "model-int8.onnx", "tokenizer.json", "manifest.json"}
    assert not [p for p in cache.iterdir() if p.name.startswith(".build-")]  # no half-built folder left behind
    vectors = OnnxModel(first, "onnx").encode(TEXTS)
    assert vectors.shape == (3, 32)

    assert ensure_built(model, cache) == first  # same files: the same build, not rebuilt
    assert (first / "manifest.json").read_text() == manifest

    config = json.loads((model / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6  # a changed model (here its config) gets a new build
    (model / "config.json").write_text(json.dumps(config))
    second = ensure_built(model, cache)
    assert second != first and (second / "manifest.json").is_file()
    assert not first.exists()  # the stale build is removed


def test_many_texts_run_in_length_sorted_batches_and_come_back_in_order(
    onnx_embedders: dict[str, OnnxEmbedder],
) -> None:
    model = onnx_embedders["onnx"].model
    texts = [TEXTS[i % 3][: 20 + 37 * i] for i in range(2 * model.batch_size + 3)]  # lengths out of order
    together = model.encode(texts)
    alone = np.vstack([model.encode([text]) for text in texts])
    assert together.shape == (len(texts), 384)
    assert cosines(together, alone).min() > 0.9999


def test_document_lanes_deal_batches_out_and_give_every_vector_back_in_order(
    onnx_embedders: dict[str, OnnxEmbedder],
) -> None:
    settings = load_settings(data_dir=Path("/tmp"), embed_cache_dir=MODEL_CACHE, ingest_nice=7)
    embedder = replace(load_onnx_embedder(settings, "onnx"), lanes=2)  # two lanes even on a one-core machine
    texts = [TEXTS[i % 3][: 15 + 41 * i] for i in range(2 * embedder.batch_size + 5)]  # lengths out of order
    parts = embedder._deal(texts)
    assert len(parts) == 2 and sorted(i for part in parts for i in part) == list(range(len(texts)))
    assert {len(part) for part in parts} != {len(texts)}  # both lanes got work
    lanes = embedder.embed_documents(texts)
    alone = onnx_embedders["onnx"].embed(texts)
    assert cosines(lanes, alone).min() > 0.9999  # same model, same order: one session per lane changes nothing

    workers = [t for t in threading.enumerate() if t.name.startswith("rag-embed-lane")]
    mine = [t for t in workers if t in embedder._pool._threads]  # type: ignore[union-attr]
    assert mine, workers
    base = os.getpriority(os.PRIO_PROCESS, 0)
    for thread in mine:  # the lanes run less favoured than the process (questions) by RAG_INGEST_NICE
        assert niceness(thread.native_id) == min(19, base + 7), thread.name
    assert niceness(threading.get_native_id()) == base  # the caller's own priority is untouched


def test_auto_chooses_within_the_quality_limits_and_caches_the_decision(embedder: Embedder) -> None:
    settings = load_settings(data_dir=Path("/tmp"), embed_cache_dir=MODEL_CACHE)
    assert settings.embed_backend == "auto"
    choice = embedder.choice
    assert choice is not None and choice.backend == embedder.backend
    measured = {m.backend: m for m in choice.measurements}
    assert {"torch-fp32", "onnx", "onnx-int8"} <= set(measured)
    chosen = measured[embedder.backend]
    assert chosen.passed and chosen.cosine_mean >= QUALITY.cosine_mean and chosen.cosine_min >= QUALITY.cosine_min
    assert chosen.chunks_per_s == max(m.chunks_per_s for m in measured.values() if m.passed)
    assert measured["torch-fp32"].cosine_min == pytest.approx(1.0)
    again = choose_backend(settings)
    assert again.cached and again.backend == choice.backend and again.measurements == choice.measurements
    assert embedder.backend in embedder.describe() and "torch-fp32" in embedder.describe()
    assert len(CALIBRATION_TEXTS) == 64


# -- bad input -----------------------------------------------------------------------------------
def test_an_unknown_backend_is_refused_naming_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_EMBED_BACKEND", "tensorrt")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = err.value.user_message
    assert "RAG_EMBED_BACKEND" in message and "'tensorrt'" in message
    for valid in ("auto", "torch", "onnx", "onnx-int8"):
        assert f"'{valid}'" in message


def test_a_missing_onnxruntime_falls_back_to_torch_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees when it is not installed
    caplog.set_level(logging.WARNING, logger="rag.embeddings")
    for backend in ("onnx", "onnx-int8", "auto"):
        embedder = load_embedder(load_settings(data_dir=tmp_path, embed_backend=backend, embed_precision="fp32"))
        assert isinstance(embedder, TorchEmbedder) and embedder.backend == "torch-fp32"
        assert "onnxruntime" in embedder.fallback and backend in embedder.fallback
        assert "fallback" in embedder.describe()
        assert any(backend in r.getMessage() and "onnxruntime" in r.getMessage() for r in caplog.records)
        assert embedder.model_id == "sentence-transformers/all-MiniLM-L6-v2"  # the same model, not another
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").glob("*/manifest.json"))


def test_a_model_the_exporter_cannot_reproduce_falls_back_to_torch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dense = _tiny_model(tmp_path / "tiny-dense")
    modules = json.loads((dense / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (dense / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(BackendUnavailableError, match="Dense"):
        ensure_built(dense, tmp_path / "cache")

    weighted = _tiny_model(tmp_path / "tiny-weighted")  # sentence-transformers runs it; this exporter does not
    pooling = {"word_embedding_dimension": 32, "pooling_mode_weightedmean_tokens": True}
    (weighted / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    caplog.set_level(logging.WARNING, logger="rag.embeddings")
    embedder = load_embedder(load_settings(data_dir=tmp_path, embed_model=str(weighted), embed_backend="onnx"))
    assert isinstance(embedder, TorchEmbedder) and embedder.backend.startswith("torch-")
    assert embedder.model_id == str(weighted.resolve()) and embedder.dim == 32  # the same model, on torch
    assert "pooling" in embedder.fallback
    assert any("onnx" in r.getMessage() and "pooling" in r.getMessage() for r in caplog.records)
    assert len(embedder.embed(TEXTS[:1])[0]) == 32


def test_loading_an_onnx_embedder_imports_neither_torch_nor_transformers(
    onnx_embedders: dict[str, OnnxEmbedder],
) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from rag.config import load_settings\n"
        "from rag.embeddings import load_embedder\n"
        f"e = load_embedder(load_settings(data_dir=Path('/tmp'), embed_backend='onnx-int8', "
        f"embed_cache_dir={str(MODEL_CACHE)!r}))\n"
        "assert e.backend == 'onnx-int8', e.describe()\n"
        "assert len(e.embed_query_sync('How do giraffes eat?')) == 384\n"
        "e.count_tokens('a question')\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'llama_index.embeddings')"
        " if any(k == m or k.startswith(m + '.') for k in sys.modules)))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
