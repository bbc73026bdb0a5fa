"""Questions against the indexed corpus: right file and page, retrieval-only mode, the LLM path over real HTTP."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pypdf import PdfReader

from rag.options import AskOptions
from rag.query import RETRIEVAL_ONLY_NOTE, ChatTurn, cited_documents

pytestmark = pytest.mark.milvus


@pytest.mark.parametrize(
    ("question", "file_name", "page", "phrase"),
    [
        (
            "How many airplanes of U.S. registry does the proposed AD affect?",
            "federal-register-2020-17221.pdf",
            5,
            "73 airplanes",
        ),
        (
            "Which R package provides an S3 class for discrete irregular time series?",
            "zoo.pdf",
            1,
            "discrete irregular time series",
        ),
        (
            "How does declarative partitioning work in PostgreSQL?",
            "postgresql15_ddl-partitioning.html",
            None,
            "partitioned table",
        ),
    ],
)
def test_answers_cite_known_file_and_page(indexed_corpus, corpus: Path, question, file_name, page, phrase) -> None:  # noqa: ANN001
    svc, _ = indexed_corpus
    answer = svc.ask(question, options=AskOptions(top_k=5))
    assert answer.sources[0].file_name == file_name
    hits = [
        s for s in answer.sources if (s.file_name, s.page) == (file_name, page) and phrase in " ".join(s.text.split())
    ]
    assert hits, [(s.file_name, s.page) for s in answer.sources]
    if page is not None:  # the page number is the PDF's own, checked with another extractor
        page_text = " ".join(PdfReader(corpus / file_name).pages[page - 1].extract_text().split())
        assert " ".join(phrase.split()) in page_text


def test_pdf_sources_carry_their_own_pages(indexed_corpus) -> None:  # noqa: ANN001
    svc, _ = indexed_corpus
    sources = svc.retrieve("linear models and regression formulae", options=AskOptions(top_k=10))
    pages = {s.page for s in sources if s.file_name == "R-intro.pdf"}
    assert len(pages) > 1 and all(1 <= p <= 113 for p in pages)


def test_limit_to_documents(indexed_corpus) -> None:  # noqa: ANN001
    svc, report = indexed_corpus
    zoo = next(f.doc_id for f in report.files if f.file == "zoo.pdf")
    sources = svc.retrieve("How do I partition a table?", options=AskOptions(top_k=5, doc_ids=(zoo,)))
    assert sources and {s.file_name for s in sources} == {"zoo.pdf"}


def test_retrieval_only_answer_is_labelled(indexed_corpus) -> None:  # noqa: ANN001
    svc, _ = indexed_corpus
    answer = svc.ask("How many airplanes of U.S. registry does the proposed AD affect?")
    assert answer.mode == "retrieval-only"
    assert answer.mode == "retrieval-only" and "73 airplanes" in answer.answer
    assert RETRIEVAL_ONLY_NOTE not in answer.answer  # said once by the chat or the CLI, not in every answer


def test_follow_up_uses_history_without_llm(indexed_corpus) -> None:  # noqa: ANN001
    svc, _ = indexed_corpus
    history = [
        ChatTurn(role="user", content="What is declarative partitioning in PostgreSQL?"),
        ChatTurn(role="assistant", content="..."),
    ]
    answer = svc.ask("And its limitations?", history=history)
    assert answer.standalone_question and "partitioning" in answer.standalone_question
    assert answer.sources[0].file_name == "postgresql15_ddl-partitioning.html"


def test_llm_answer_streams_over_http(llm_service, fake_openai, corpus: Path) -> None:  # noqa: ANN001
    llm_service.ingest([corpus / "federal-register-2020-17221.pdf"])
    fake_openai.enqueue("The proposed AD affects 73 airplanes [1].")
    before = len(fake_openai.requests)
    stream = llm_service.stream_answer("How many airplanes does the AD affect?")
    pieces = list(stream)
    assert len(pieces) > 3 and "".join(pieces) == "The proposed AD affects 73 airplanes [1]."
    answer = stream.answer
    assert answer.mode == "llm" and answer.answer == "".join(pieces)
    assert {s.file_name for s in answer.sources} == {"federal-register-2020-17221.pdf"}
    cited = [i for i, s in enumerate(answer.sources, start=1) if s.page == 5 and "73 airplanes" in s.text]
    assert cited
    request = fake_openai.requests[before]
    assert request["stream"] is True and request["model"] == "fake-model"
    assert f"[{cited[0]}] federal-register-2020-17221.pdf, p. 5:" in request["messages"][-1]["content"]


def test_llm_follow_up_is_condensed_first(llm_service, fake_openai, corpus: Path) -> None:  # noqa: ANN001
    llm_service.ingest([corpus / "postgresql15_ddl-partitioning.html"])
    fake_openai.enqueue("What are the limitations of declarative partitioning in PostgreSQL?", "They are listed [1].")
    before = len(fake_openai.requests)
    history = [
        ChatTurn(role="user", content="What is declarative partitioning?"),
        ChatTurn(role="assistant", content="A way to split a table [1]."),
    ]
    answer = llm_service.ask("What are its limitations?", history=history)
    assert answer.standalone_question == "What are the limitations of declarative partitioning in PostgreSQL?"
    assert answer.answer == "They are listed [1]."
    condense, final = fake_openai.requests[before : before + 2]
    assert "What are its limitations?" in condense["messages"][-1]["content"]
    assert [m["role"] for m in final["messages"]][:3] == ["system", "user", "assistant"]


def test_llm_failure_is_a_model_error(llm_service, fake_openai, corpus: Path) -> None:  # noqa: ANN001
    from rag.errors import ModelError

    llm_service.ingest([corpus / "unstructured_README.md"])
    fake_openai.fail_next = 401
    with pytest.raises(ModelError) as err:
        llm_service.ask("What is unstructured?")
    assert "API key" in err.value.user_message


def test_per_question_model_and_temperature(llm_service, fake_openai, corpus: Path) -> None:  # noqa: ANN001
    llm_service.ingest([corpus / "unstructured_README.md"])
    before = len(fake_openai.requests)
    llm_service.ask("What is unstructured?", options=AskOptions(llm_model="other-model", temperature=0.7))
    llm_service.ask("What is unstructured?")
    override, default = fake_openai.requests[before : before + 2]
    assert (override["model"], override["temperature"]) == ("other-model", 0.7)
    assert default["model"] == "fake-model" and default["temperature"] == llm_service.settings.temperature


def test_a_model_outside_llm_models_is_refused(llm_service, fake_openai) -> None:  # noqa: ANN001
    """The engine, not only the chat page's chooser, keeps questions to LLM_MODELS: nothing reaches the server."""
    from rag.errors import ModelError

    before = len(fake_openai.requests)
    with pytest.raises(ModelError) as err:
        llm_service.ask("What is unstructured?", options=AskOptions(llm_model="gpt-4-32k-expensive"))
    assert "gpt-4-32k-expensive" in err.value.user_message and "LLM_MODELS" in err.value.user_message
    assert "fake-model, other-model" in err.value.user_message
    assert len(fake_openai.requests) == before


def test_retrieval_only_answer_quotes_the_whole_sentence_with_its_citation(indexed_corpus) -> None:  # noqa: ANN001
    svc, _ = indexed_corpus
    answer = svc.ask("How many airplanes does the proposed AD affect?")
    first_line = answer.answer.splitlines()[0]
    assert "73 airplanes of U.S. registry." in first_line  # not cut at the abbreviation
    cited = int(re.search(r"\\\[(\d+)\\\]$", first_line).group(1))
    assert "73 airplanes" in answer.sources[cited - 1].text


def test_a_short_follow_up_without_llm_carries_the_previous_question_and_document(indexed_corpus) -> None:  # noqa: ANN001
    svc, _ = indexed_corpus
    first = svc.ask("How many airplanes does the proposed AD affect?")
    history = [
        ChatTurn(role="user", content=first.question),
        ChatTurn(role="assistant", content=first.answer, doc_ids=cited_documents(first.answer, first.sources)),
    ]
    assert history[1].doc_ids and all(history[1].doc_ids)
    follow_up = svc.ask("and what did it cost per operator?", history=history)
    assert "$7,650" in follow_up.answer.replace("\\", "")
    assert follow_up.sources[0].file_name == "federal-register-2020-17221.pdf"
