"""The retrieval-only answer's parts: sentences from wrapped text, and windows chosen by the fused scores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rag.extract import MAX_WINDOW_WORDS, _plain, _short_heading, abest_windows, arank_windows, sentences, terms
from rag.query import Source
from rag.runtime import Runtime

WRAPPED_PDF = (
    "Costs of Compliance\n"
    "The FAA estimates that this proposed AD affects 73 airplanes of U.S.\n"
    "registry. The FAA estimates\n"
    "the average total cost per operator to be\n"
    "$7,650 (90 work-hours × $85 per workhour).\n"
    "Authority for This Rulemaking\n"
    "Title 49 of the United States Code\n"
    "specifies the FAA’s authority to issue\n"
    "rules on aviation safety."
)


def _texts(text: str) -> list[str]:
    return [s.text for s in sentences(text)]


def test_wrapped_lines_abbreviations_and_headings() -> None:
    assert _texts(WRAPPED_PDF) == [
        "Costs of Compliance",
        "The FAA estimates that this proposed AD affects 73 airplanes of U.S. registry.",
        "The FAA estimates the average total cost per operator to be $7,650 (90 work-hours × $85 per workhour).",
        "Authority for This Rulemaking",
        "Title 49 of the United States Code specifies the FAA’s authority to issue rules on aviation safety.",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The fare was 7.225 dollars vs. 8.05 dollars. He paid it.", 2),  # decimals and "vs."
        ("Series, i.e., those with an index, are regular. See Fig. 3 for details.", 2),
        ("The order is Rprofile.site, the user profile, .RData and then .First(). Later files mask.", 2),
        ("## Usage\n- first item here\n- second item there", 3),  # a heading and list items stay apart
        ("are considered part of a module called\n__main__\n, so they have their own namespace.", 1),  # HTML inline
        ("Find the lines that are (a) explicitly defined and/or (b) implied by the words. Then merge them.", 2),
        ("The oath is required. Fed. R. Bankr. P. 2003(b)(1). Spouses may be sworn together.", 3),
    ],
)
def test_sentence_boundaries(text: str, expected: int) -> None:
    assert len(sentences(text)) == expected, _texts(text)


def test_offsets_point_into_the_passage() -> None:
    for s in sentences(WRAPPED_PDF):
        assert " ".join(WRAPPED_PDF[s.start : s.end].split()) == s.text


def test_a_table_without_punctuation_is_cut_at_its_lines() -> None:
    rows = "\n".join(f"07/{d:02d}/2015 Company {d} San Diego {d * 3} Layoff Permanent" for d in range(1, 30))
    found = sentences(rows)
    assert len(found) > 1 and all(len(s.text.split()) <= MAX_WINDOW_WORDS for s in found)


def _source(text: str, hit: tuple[int, int] | None = None) -> Source:
    start, end = hit or (0, len(text))
    return Source(file_name="f.pdf", page=1, score=0.1, text=text, hit_start=start, hit_end=end)


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    """The loop the embedder's interactive calls run on, as in the engine."""
    loop = Runtime()
    yield loop
    loop.close()


def test_the_answering_sentence_is_quoted_first_with_its_neighbours_kept_short(embedder, runtime) -> None:  # noqa: ANN001
    filler = "Operators must keep records of every inspection in the maintenance log. " * 3
    passages = [_source(filler + "\n" + WRAPPED_PDF), _source("Giraffes eat acacia leaves in the dry savanna. " * 4)]
    question = "How many airplanes of U.S. registry does the AD affect?"
    windows = runtime.run(abest_windows(question, passages, embedder))
    assert 1 <= len(windows) <= 2
    first = windows[0]
    assert first.source == 1 and "73 airplanes of U.S. registry." in first.text
    assert len(first.sentences) == 1 or len(first.text.split()) <= MAX_WINDOW_WORDS
    assert not first.text.startswith("Costs of Compliance")  # a heading is never glued to a quote
    if len(windows) == 2:
        assert not {s.text for s in windows[0].sentences} & {s.text for s in windows[1].sentences}


def test_a_figure_is_preferred_when_the_question_asks_how_much(embedder, runtime) -> None:  # noqa: ANN001
    passages = [_source(WRAPPED_PDF)]
    windows = runtime.run(abest_windows("How much does it cost per operator?", passages, embedder))
    assert "$7,650" in windows[0].text


def test_dot_leaders_that_pysbd_rewrites_still_give_sentences_of_the_passage() -> None:
    text = "2.4 Logical vectors . . . . . . 10\nSee x[c(1, . . ., length(x))]. The elements are selected. Then kept."
    found = sentences(text)
    assert found and all(text[s.start : s.end].strip() for s in found)
    assert "The elements are selected." in [s.text for s in found]


ZOO = (
    "In zoo, the generic function rollapply is provided along with a zoo and a ts method. "
    "In previous versions of zoo, this function was called rapply. "
    "It was renamed because from R 2.4.0 on, base R provides a different function rapply for recursive "
    "(and not rolling) application of functions. "
    "The function zoo::rapply is still provided for backward compatibility."
)


def test_a_sentence_that_leans_back_is_quoted_with_the_one_it_leans_on(embedder, runtime) -> None:  # noqa: ANN001
    question = "Why was rapply renamed?"
    for window in runtime.run(arank_windows(question, [_source(ZOO)], embedder)):
        if window.sentences[0].text.startswith("It was renamed"):
            raise AssertionError(f"a window starts with a dangling sentence: {window.text}")
    best = runtime.run(abest_windows(question, [_source(ZOO)], embedder))[0]
    assert "this function was called rapply. It was renamed because" in best.text


def test_a_heading_of_several_words_is_never_glued_but_a_table_row_is_not_a_heading() -> None:
    text = (
        "5. VERIFICATION OF DEBTOR IDENTITY AND SOCIAL SECURITY NUMBER\n"
        "At the meeting of creditors, each individual debtor must present photo identification.\n"
        "07/15/2015 07/15/2015 TaylorMade Golf Company Carlsbad 64 Layoff Permanent"
    )
    heading, sentence, row = sentences(text)
    assert _short_heading(heading.text) and not _short_heading(sentence.text) and not _short_heading(row.text)


def test_a_why_question_prefers_the_sentence_that_gives_a_reason(embedder, runtime) -> None:  # noqa: ANN001
    text = (
        "Unique constraints on partitioned tables must include all the partition key columns. "
        "The partition key columns are listed in the PARTITION BY clause of the table. "
        "This limitation exists because the individual indexes making up the constraint can only directly "
        "enforce uniqueness within their own partitions."
    )
    best = runtime.run(
        abest_windows("Why must unique constraints include the partition key?", [_source(text)], embedder)
    )[0]
    assert "because the individual indexes" in best.text


def test_links_are_read_as_their_labels() -> None:
    text = (
        "Use `curve_edge` objects in table detection. ([6f6b465](https://github.com/jsvine/pdfplumber/commit/6f6b465))"
    )
    assert "github" not in terms(_plain(text)) and "6f6b465" in terms(_plain(text))
