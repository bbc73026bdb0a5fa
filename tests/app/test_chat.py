"""The chat page: streamed answers with sources, follow-ups, document filter, server-side history."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.support import AppEnv, new_sid, page_text, write_doc
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.milvus

CHAT = "pages/chat.py"
GIRAFFES = "Giraffes eat acacia leaves in the dry savanna. " * 20


def _ingest(app_env: AppEnv, *paths: Path) -> dict[str, str]:
    report = app_env.service().ingest(list(paths))
    assert all(r.status == "indexed" for r in report.files), report
    return {r.file: r.doc_id for r in report.files}


def _ask(at: AppTest, question: str) -> AppTest:
    return at.chat_input(key="chat.question").set_value(question).run()


def _plain(markdown: str) -> str:
    return markdown.replace("\\", "")


@pytest.fixture
def llm_env(app_env: AppEnv, monkeypatch: pytest.MonkeyPatch, fake_openai: FakeOpenAI) -> AppEnv:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("LLM_MODEL", "fake-model")
    monkeypatch.setenv("LLM_MODELS", "fake-model,other-model")
    fake_openai.answers.clear()
    return app_env


def test_retrieval_only_mode_is_labelled_and_answers_with_sources(app_env: AppEnv, tmp_path: Path) -> None:
    _ingest(app_env, write_doc(tmp_path / "src", "giraffes.txt", GIRAFFES))
    at = app_env.app(CHAT)
    at.run()
    assert any("Retrieval-only mode" in i.value and "OPENAI_BASE_URL" in i.value for i in at.info)
    assert at.chat_input(key="chat.question")

    _ask(at, "What do giraffes eat?")

    assert not at.exception and not at.error
    user, assistant = at.chat_message
    assert user.name == "user" and assistant.name == "assistant"
    answer = assistant.markdown[0].value
    assert answer.startswith("“") and "acacia leaves" in answer and "\\[1\\]" in answer  # a quote, cited
    assert "Retrieval-only mode" not in answer  # the notice above the conversation says it once
    assert "giraffes.txt" in _plain(assistant.caption[0].value)
    sources = assistant.expander[0]
    assert sources.label.startswith("Sources (")
    assert "Giraffes eat acacia leaves" in sources.text[0].value
    assert "score" in sources.markdown[0].value


def test_llm_answer_streams_with_sources_naming_file_and_page(
    llm_env: AppEnv, corpus: Path, fake_openai: FakeOpenAI
) -> None:
    _ingest(llm_env, corpus / "zoo.pdf")
    at = llm_env.app(CHAT)
    at.run()
    assert not any("Retrieval-only" in i.value for i in at.info)

    _ask(at, "How do I create a zoo series from a numeric vector?")

    assert not at.exception and not at.error
    assistant = at.chat_message[1]
    answer = _plain(assistant.markdown[0].value)
    assert re.match(r"According to zoo\.pdf, p\. \d+, ", answer), answer
    assert re.search(r"\[1\] zoo\.pdf, p\. \d+", _plain(assistant.caption[0].value))
    request = fake_openai.requests[-1]
    assert request["stream"] is True and request["model"] == "fake-model"


def test_follow_up_questions_carry_the_history(llm_env: AppEnv, tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    _ingest(llm_env, write_doc(tmp_path / "src", "giraffes.txt", GIRAFFES))
    at = llm_env.app(CHAT)
    at.run()
    fake_openai.enqueue("Acacia leaves [1].")
    _ask(at, "What do giraffes eat?")
    fake_openai.enqueue("What do giraffes drink?", "Water, rarely [1].")

    _ask(at, "And what do they drink?")

    assert [m.name for m in at.chat_message] == ["user", "assistant", "user", "assistant"]
    assert _plain(at.chat_message[3].markdown[0].value) == "Water, rarely [1]."
    condense, answer = fake_openai.requests[-2:]
    assert "What do giraffes eat?" in condense["messages"][-1]["content"]
    contents = [m["content"] for m in answer["messages"]]
    assert "What do giraffes eat?" in contents and "Acacia leaves [1]." in contents


def test_conversation_survives_a_refresh_and_stays_private(app_env: AppEnv, tmp_path: Path) -> None:
    _ingest(app_env, write_doc(tmp_path / "src", "giraffes.txt", GIRAFFES))
    at = app_env.app(CHAT)
    at.run()
    _ask(at, "What do giraffes eat?")

    refreshed = app_env.app(CHAT)  # a browser refresh: a new Streamlit session, same sid in the URL
    refreshed.run()
    stranger = app_env.app(CHAT, sid=new_sid())
    stranger.run()

    assert [m.name for m in refreshed.chat_message] == ["user", "assistant"]
    assert refreshed.chat_message[0].markdown[0].value == "What do giraffes eat?"
    assert "giraffes.txt" in _plain(refreshed.chat_message[1].caption[0].value)
    assert not stranger.chat_message
    assert "What do giraffes eat" not in page_text(stranger)


def test_clear_and_download(app_env: AppEnv, tmp_path: Path) -> None:
    _ingest(app_env, write_doc(tmp_path / "src", "giraffes.txt", GIRAFFES))
    at = app_env.app(CHAT)
    at.run()
    assert at.button(key="chat.clear").disabled
    _ask(at, "What do giraffes eat?")
    assert not at.button(key="chat.clear").disabled
    download = at.get("download_button")[0]
    assert download.proto.label == "Download as Markdown" and not download.proto.disabled

    at.button(key="chat.clear").click().run()

    assert not at.chat_message
    refreshed = app_env.app(CHAT)
    refreshed.run()
    assert not refreshed.chat_message


def test_a_question_can_be_limited_to_chosen_documents(app_env: AppEnv, tmp_path: Path) -> None:
    ids = _ingest(
        app_env,
        write_doc(tmp_path / "src", "giraffes.txt", GIRAFFES),
        write_doc(tmp_path / "src", "zebras.txt", "Zebras eat grass and have black and white stripes. " * 20),
    )
    at = app_env.app(CHAT)
    at.run()
    at.multiselect(key="chat.doc_ids").set_value([ids["zebras.txt"]]).run()

    _ask(at, "What do giraffes eat?")

    assistant = at.chat_message[1]
    caption = _plain(assistant.caption[0].value)
    assert "zebras.txt" in caption and "giraffes.txt" not in caption


def test_a_large_library_is_searched_by_name_not_listed_whole(
    app_env: AppEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21: the page reads one page of documents (DOCUMENTS_PAGE, made 2 here) however many there are; the
    others are found by name, and a chosen document stays choosable when the search moves on."""
    import rag

    monkeypatch.setattr(rag, "DOCUMENTS_PAGE", 2)
    ids = _ingest(
        app_env,
        write_doc(tmp_path / "src", "giraffes.txt", GIRAFFES),
        write_doc(tmp_path / "src", "zebras.txt", "Zebras eat grass and have black and white stripes. " * 20),
        write_doc(tmp_path / "src", "okapis.txt", "Okapis live in the rainforest of Congo. " * 20),
    )
    at = app_env.app(CHAT)
    at.run()
    picker = at.multiselect(key="chat.doc_ids")
    assert len(picker.options) == 2  # the newest page only
    assert "3 documents" in at.text_input(key="chat.doc_search").help

    at.text_input(key="chat.doc_search").set_value("GIRAF").run()
    assert at.multiselect(key="chat.doc_ids").options == ["giraffes.txt"]
    at.multiselect(key="chat.doc_ids").set_value([ids["giraffes.txt"]]).run()
    at.text_input(key="chat.doc_search").set_value("zeb").run()
    assert sorted(at.multiselect(key="chat.doc_ids").options) == ["giraffes.txt", "zebras.txt"]
    assert at.multiselect(key="chat.doc_ids").value == [ids["giraffes.txt"]]

    _ask(at, "What do zebras eat?")
    assert "giraffes.txt" in _plain(at.chat_message[1].caption[0].value)
    assert "zebras.txt" not in _plain(at.chat_message[1].caption[0].value)


def test_top_k_from_the_sidebar(app_env: AppEnv, tmp_path: Path) -> None:
    _ingest(
        app_env,
        write_doc(
            tmp_path / "src", "long.txt", "\n\n".join(f"Paragraph {i} talks about topic {i}. " * 30 for i in range(12))
        ),
    )
    at = app_env.app(CHAT)
    at.run()
    at.slider(key="chat.top_k").set_value(2).run()

    _ask(at, "What does paragraph 3 talk about?")

    assert at.chat_message[1].expander[0].label == "Sources (2)"


def test_document_text_is_never_rendered_as_html_or_images(
    llm_env: AppEnv, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    hostile = (
        '![p](http://127.0.0.1:9/p.png) <img src="http://127.0.0.1:9/i.png"> <script>alert(1)</script>\n'
        "Pelicans store fish in their throat pouch. " * 10
    )
    _ingest(llm_env, write_doc(tmp_path / "src", "hostile.txt", hostile))
    at = llm_env.app(CHAT)
    at.run()

    _ask(at, "Where do pelicans store fish?")

    assistant = at.chat_message[1]
    answer = assistant.markdown[0].value
    assert "127.0.0.1:9/p.png" in answer.replace("\u2060", "")  # the model repeated the document's first line...
    rendered = "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)
    assert "![" not in rendered  # ...but no Markdown image can form
    assert not re.search(r"(?<!\\)<", rendered)  # and every < is escaped: no HTML tag
    assert "<script>" in assistant.expander[0].text[0].value  # the passage itself is shown as plain text


def test_an_llm_failure_is_shown_and_not_stored(llm_env: AppEnv, tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    _ingest(llm_env, write_doc(tmp_path / "src", "giraffes.txt", GIRAFFES))
    at = llm_env.app(CHAT)
    at.run()
    fake_openai.fail_next = 401

    _ask(at, "What do giraffes eat?")

    assert not at.exception
    assert "API key" in at.error[0].value
    refreshed = llm_env.app(CHAT)
    refreshed.run()
    assert not refreshed.chat_message


def test_sidebar_model_and_temperature_reach_the_llm_server(
    llm_env: AppEnv, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    _ingest(llm_env, write_doc(tmp_path / "src", "giraffes.txt", GIRAFFES))
    at = llm_env.app(CHAT)
    at.run()
    assert at.selectbox(key="chat.llm_model").options == ["fake-model", "other-model"]  # LLM_MODELS, not free text
    at.selectbox(key="chat.llm_model").set_value("other-model")
    at.slider(key="chat.temperature").set_value(0.7)
    _ask(at, "What do giraffes eat?")

    assert not at.exception and not at.error
    request = fake_openai.requests[-1]
    assert request["model"] == "other-model" and request["temperature"] == pytest.approx(0.7)


def test_thumbs_are_kept_with_the_answer_and_regenerate_asks_again(app_env: AppEnv, tmp_path: Path) -> None:
    _ingest(app_env, write_doc(tmp_path / "src", "giraffes.txt", GIRAFFES))
    at = app_env.app(CHAT)
    at.run()
    _ask(at, "What do giraffes eat?")
    assert not at.exception and not at.error

    at.feedback[0].set_value(1).run()  # thumbs up
    store = app_env.service().conversations
    [answer] = [t for t in store.history(app_env.sid) if t.role == "assistant"]
    assert answer.feedback == 1
    assert store.feedback_pairs("default", app_env.sid) == [
        {"question": "What do giraffes eat?", "file": "giraffes.txt", "evidence": " ".join(GIRAFFES.split()[:30])}
    ]
    assert "Helpful answers as evaluation pairs (1)" in [b.label for b in at.get("download_button")]
    assert sum("Retrieval-only mode" in i.value for i in at.info) == 1  # said once, above the conversation

    at.button(key=f"chat.regenerate.{answer.id}").click().run()
    assert not at.exception
    turns = store.history(app_env.sid)
    assert [t.content for t in turns if t.role == "user"] == ["What do giraffes eat?"]  # asked again, not twice
    assert turns[-1].role == "assistant" and turns[-1].id != answer.id and turns[-1].feedback is None
