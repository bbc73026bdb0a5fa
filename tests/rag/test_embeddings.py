"""The bundled model: precision choice from the CPU's flags, and bf16 vectors that match fp32 ones."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rag.config import load_settings
from rag.embeddings import Embedder, cpu_has_amx, resolve_precision
from rag.errors import ConfigError

TEXTS = [
    "Giraffes eat acacia leaves on the savanna.",
    "PostgreSQL supports range, list and hash partitioning of tables.",
    "R is a language and environment for statistical computing and graphics. " * 12,
]


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


def test_bf16_vectors_match_fp32_ones(embedder: Embedder) -> None:
    fp32 = np.array(replace(embedder, precision="fp32").embed(TEXTS))
    bf16 = np.array(replace(embedder, precision="bf16").embed(TEXTS))
    assert fp32.shape == bf16.shape == (len(TEXTS), embedder.dim)
    assert not np.array_equal(fp32, bf16)  # autocast really ran
    cosine = (fp32 * bf16).sum(axis=1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() > 0.999
    query = replace(embedder, precision="bf16").embed_query_sync(TEXTS[0])
    assert float(np.dot(query, fp32[0]) / np.linalg.norm(query) / np.linalg.norm(fp32[0])) > 0.999
