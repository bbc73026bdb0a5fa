"""Conversations kept in the database (each engine in turn), keyed by browser session or account."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rag.config import Settings
from rag.conversations import ConversationStore, StoredTurn
from rag.markdown import neutralize_markdown
from rag.query import ChatTurn, Source

ZOO = Source(file_name="zoo.pdf", page=3, score=0.8123, text="The zoo keeps lions.", doc_id="abc", chunk=2)


@pytest.fixture
def make_store(db_settings: Settings):  # noqa: ANN201
    """Open the conversations of the test's database (each engine in turn), as a new process would."""
    opened: list[ConversationStore] = []

    def _make() -> ConversationStore:
        opened.append(ConversationStore.from_settings(db_settings))
        return opened[-1]

    yield _make
    for store in opened:
        store.close()


def test_append_and_history_keep_order_sources_and_mode(make_store) -> None:  # noqa: ANN001
    store = make_store()
    store.append("s1", StoredTurn(role="user", content="What does the zoo keep?"))
    store.append("s1", StoredTurn(role="assistant", content="Lions [1]", mode="llm", sources=[ZOO]))

    turns = store.history("s1")

    assert [(t.role, t.content) for t in turns] == [("user", "What does the zoo keep?"), ("assistant", "Lions [1]")]
    assert turns[1].mode == "llm"
    assert turns[1].sources == [ZOO]
    assert store.chat_history("s1") == [
        ChatTurn(role="user", content="What does the zoo keep?"),
        ChatTurn(role="assistant", content="Lions [1]", doc_ids=(ZOO.doc_id,)),  # the document it cites, for follow-ups
    ]


def test_a_chat_turn_can_be_appended(make_store) -> None:  # noqa: ANN001
    store = make_store()
    store.append("s1", ChatTurn(role="user", content="hello"))
    assert store.history("s1")[0].content == "hello"


def test_sessions_never_see_each_other(make_store) -> None:  # noqa: ANN001
    store = make_store()
    store.append("alice", StoredTurn(role="user", content="alice's secret question"))
    store.append("bob", StoredTurn(role="user", content="bob's question"))

    assert [t.content for t in store.history("alice")] == ["alice's secret question"]
    assert [t.content for t in store.history("bob")] == ["bob's question"]
    assert store.history("carol") == []
    assert "alice" not in store.to_markdown("bob")


def test_clear_removes_only_that_session(make_store) -> None:  # noqa: ANN001
    store = make_store()
    store.append("alice", StoredTurn(role="user", content="a"))
    store.append("alice", StoredTurn(role="assistant", content="b", mode="llm"))
    store.append("bob", StoredTurn(role="user", content="c"))

    assert store.clear("alice") == 2

    assert store.history("alice") == []
    assert len(store.history("bob")) == 1


def test_conversations_survive_a_restart(make_store) -> None:  # noqa: ANN001
    store = make_store()
    store.append("s1", StoredTurn(role="assistant", content="kept", mode="retrieval-only", sources=[ZOO]))
    store.close()

    reopened = make_store()

    assert reopened.history("s1")[0].sources[0].label == "zoo.pdf, p. 3"


def test_to_markdown_has_questions_answers_and_sources(make_store) -> None:  # noqa: ANN001
    store = make_store()
    store.append("s1", StoredTurn(role="user", content="What does the zoo keep?"))
    store.append("s1", StoredTurn(role="assistant", content="Lions **only** [1]", mode="llm", sources=[ZOO]))

    text = store.to_markdown("s1")

    assert text.startswith("# Conversation\n")
    assert "## Question\n\nWhat does the zoo keep?" in text
    assert "### Answer\n\nLions **only** \\[1\\]" in text
    assert "1. zoo.pdf, p. 3 (score 0.812)" in text
    assert "> The zoo keeps lions." in text


def test_to_markdown_labels_retrieval_only_answers(make_store) -> None:  # noqa: ANN001
    store = make_store()
    store.append("s1", StoredTurn(role="assistant", content="_quoted_", mode="retrieval-only"))
    assert "### Answer (retrieval-only)\n\n_quoted_" in store.to_markdown("s1")


def test_document_text_stays_text_in_markdown(make_store) -> None:  # noqa: ANN001
    hostile = Source(
        file_name="![x](http://evil.example/a.png).txt",
        page=None,
        score=0.5,
        text='<script>alert(1)</script> ![pixel](http://evil.example/p.png) <img src="http://evil.example/i.png">',
    )
    store = make_store()
    store.append("s1", StoredTurn(role="user", content="<b>hi</b> ![q](http://evil.example/q.png)"))
    store.append(
        "s1",
        StoredTurn(
            role="assistant",
            content="![a](http://evil.example/a.png) <script>x</script>",
            mode="llm",
            sources=[hostile],
        ),
    )

    text = store.to_markdown("s1")

    assert "![" not in text
    assert not re.search(r"(?<!\\)<", text), "every < is escaped, so no HTML tag can form"


def test_neutralize_markdown_disarms_images_links_html_and_math() -> None:
    assert neutralize_markdown("![a](http://x/y.png)") == "!\\[a\\](http:\u2060//x/y.png)"  # no autolink either
    assert neutralize_markdown("<script>") == "\\<script\\>"
    assert neutralize_markdown("costs $5 and $6") == "costs \\$5 and \\$6"
    assert neutralize_markdown("**bold** and _it_") == "**bold** and _it_"
    # piece by piece gives the same as all at once (answers are streamed)
    whole = "See ![img](http://x) [1] <b>"
    assert "".join(neutralize_markdown(c) for c in whole) == neutralize_markdown(whole)


def test_user_turns_render_as_text() -> None:
    turn = StoredTurn(role="user", content="*not bold* <i>x</i> $x$")
    assert turn.safe_markdown == "\\*not bold\\* \\<i\\>x\\</i\\> \\$x\\$"


def test_concurrent_appends_from_threads(make_store) -> None:  # noqa: ANN001
    store = make_store()

    def write(sid: str) -> None:
        for i in range(25):
            store.append(sid, StoredTurn(role="user", content=str(i)))

    threads = [threading.Thread(target=write, args=(f"s{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for n in range(4):
        assert [t.content for t in store.history(f"s{n}")] == [str(i) for i in range(25)]


def test_module_does_not_import_streamlit() -> None:
    code = "import sys, rag.conversations; print('streamlit' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "False"


def test_retrieval_only_answers_keep_their_markdown_but_not_math() -> None:
    from rag.conversations import escape_math

    turn = StoredTurn(role="assistant", content="_note_ “costs $5 or \\$6” \\[1\\]", mode="retrieval-only")
    assert turn.safe_markdown == "_note_ “costs \\$5 or \\$6” \\[1\\]"
    assert escape_math("$a$ \\$b") == "\\$a\\$ \\$b"


def test_feedback_regenerate_and_export_as_labelled_pairs(make_store) -> None:  # noqa: ANN001
    from rag.evaluate import parse_pairs

    store = make_store()
    for question, answer in (("What does the zoo keep?", "Lions [1]"), ("And where?", "In cages [1]")):
        store.append("s1", StoredTurn(role="user", content=question), "w1")
        store.append("s1", StoredTurn(role="assistant", content=answer, mode="llm", sources=[ZOO]), "w1")
    first, second = (t for t in store.history("s1", "w1") if t.role == "assistant")
    assert store.set_feedback("s1", first.id or 0, 1) and store.set_feedback("s1", second.id or 0, -1)
    assert not store.set_feedback("intruder", first.id or 0, -1)  # not their answer
    assert [t.feedback for t in store.history("s1", "w1") if t.role == "assistant"] == [1, -1]

    pairs = store.feedback_pairs("w1")
    assert pairs == [{"question": "What does the zoo keep?", "file": "zoo.pdf", "evidence": "The zoo keeps lions."}]
    assert parse_pairs("\n".join(json.dumps(p) for p in pairs), "feedback")[0].file == "zoo.pdf"
    assert store.feedback_pairs("other") == []

    asked_again = store.pop_answer("s1", "w1")
    assert asked_again is not None and asked_again.content == "And where?"
    assert [t.content for t in store.history("s1", "w1")] == ["What does the zoo keep?", "Lions [1]"]
