"""The Evaluate page: pasted pairs are scored per mode side by side; bad lines are named, nothing changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.support import AppEnv, page_text, write_doc

pytestmark = pytest.mark.milvus

EVALUATE = "pages/evaluate.py"


def test_pasted_pairs_are_scored_for_each_mode(app_env: AppEnv, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    write_doc(folder, "bees.txt", "Honey bees dance to tell their sisters where the flowers are. " * 30)
    write_doc(folder, "parts.txt", "Order spare item QX7719ZK from the warehouse catalogue. " * 30)
    app_env.service().ingest(sorted(folder.iterdir()))
    lines = [
        {
            "question": "How do bees say where flowers are?",
            "file": "bees.txt",
            "evidence": "Honey bees dance to tell their sisters where the flowers are.",
        },
        {
            "question": "Where do I order QX7719ZK?",
            "file": "parts.txt",
            "evidence": "Order spare item QX7719ZK from the warehouse catalogue.",
        },
    ]
    at = app_env.app(EVALUATE)
    at.run()
    at.text_area(key="evaluate.text").set_value("\n".join(json.dumps(line) for line in lines))
    at.button(key="evaluate.run").click().run()
    assert not at.exception and not at.error
    summary = at.dataframe[0].value
    assert list(summary["mode"]) == ["Meaning (vectors)", "Keywords (BM25)", "Both (hybrid)"]
    assert list(summary["hit@5"]) == [1.0, 1.0, 1.0]
    per_question = at.dataframe[1].value
    assert list(per_question["question"]) == [line["question"] for line in lines]


def test_a_bad_line_is_named_and_nothing_is_asked(app_env: AppEnv) -> None:
    at = app_env.app(EVALUATE)
    at.run()
    at.text_area(key="evaluate.text").set_value(
        '{"question": "q", "file": "f.txt", "evidence": "e"}\n{"question": "q"}'
    )
    at.button(key="evaluate.run").click().run()
    assert not at.exception
    assert "line 2" in at.error[0].value and "has no file, evidence" in at.error[0].value
    assert not at.dataframe and "hit@5" not in page_text(at)
