"""Quality on labelled question/evidence pairs: retrieval (hit@1/3/5 and MRR, per retrieval mode) and
answers (does the answer a user reads quote the evidence, and near its top).

A pair is `{"question", "file", "evidence"}`, the evidence a verbatim quote from that file. A returned
passage is a hit when it comes from that file and holds at least 80% of the evidence's word 3-grams
(words compared lower-cased, after the same Unicode clean-up the readers apply), so a quote cut across
two chunks still counts when most of it is in one, and layout differences (line breaks, hyphens at
line ends) do not matter. The rank of the first hit gives hit@k and the reciprocal rank.

An answer holds the evidence by the same rule, applied to the answer's text (reported at 80% and at 50% of
the 3-grams), and holds it early when its first two non-empty lines do: what a reader sees before scrolling.

Evaluation only reads: it asks the engine the questions and indexes nothing.
"""

from __future__ import annotations

import json
import re
import statistics
import time
import unicodedata
from collections.abc import Sequence

from pydantic import BaseModel, ValidationError

from rag.errors import EvalFileError
from rag.options import AskOptions, Retrieval

HIT_THRESHOLD = 0.8
HALF_THRESHOLD = 0.5
FIRST_LINES = 2
CUTOFFS = (1, 3, 5)
_WORD = re.compile(r"\w+")
_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()<>#+!|~$:=.-])")
_INVISIBLE = re.compile(r"[\u00ad\ufffe\u200b\u2060]")  # soft hyphens, zero-width spaces, word joiners


class QAPair(BaseModel, frozen=True):
    """One labelled question: the file that answers it and a verbatim quote of the answer."""

    question: str
    file: str
    evidence: str


class Returned(BaseModel, frozen=True):
    """A passage returned for a question (what the Evaluate page shows for a miss)."""

    file_name: str
    page: int | None
    text: str
    doc_id: str | None = None


class EvalRow(BaseModel, frozen=True):
    """How one question fared: the rank of its first hit (None: not in the top k)."""

    question: str
    file: str
    rank: int | None
    seconds: float
    returned: list[Returned]


class EvalReport(BaseModel, frozen=True):
    """hit@k and MRR of one retrieval mode over a set of pairs; the schema of `eval --json`."""

    mode: Retrieval
    top_k: int
    n: int
    hit_at: dict[str, float]
    mrr: float
    p50_ms: float
    rows: list[EvalRow]

    @property
    def misses(self) -> list[EvalRow]:
        """Questions whose evidence was not in the top k."""
        return [row for row in self.rows if row.rank is None]


def words(text: str) -> list[str]:
    """Lower-case words of a text, after Unicode clean-up (so PDF layout does not decide a hit)."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).lower()
    text = re.sub(r"(\w)-\s*\n\s*(\w)", r"\1\2", text)
    return _WORD.findall(text)


def _grams(tokens: Sequence[str], n: int = 3) -> set[tuple[str, ...]]:
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def evidence_share(evidence: str, passage: str) -> float:
    """The share of the evidence's word 3-grams found in the passage."""
    wanted = _grams(words(evidence))
    if not wanted:
        return 0.0
    tokens = words(passage)
    if len(wanted) == 1 and len(next(iter(wanted))) < 3:  # a quote of one or two words
        gram = next(iter(wanted))
        return 1.0 if any(tuple(tokens[i : i + len(gram)]) == gram for i in range(len(tokens))) else 0.0
    return len(wanted & _grams(tokens)) / len(wanted)


def first_hit(pair: QAPair, returned: Sequence[Returned]) -> int | None:
    """1-based rank of the first returned passage that holds the evidence, from the right file."""
    for rank, passage in enumerate(returned, start=1):
        if passage.file_name == pair.file and evidence_share(pair.evidence, passage.text) >= HIT_THRESHOLD:
            return rank
    return None


def parse_pairs(text: str, source: str = "the evaluation file") -> list[QAPair]:
    """Pairs from JSON Lines; a bad line fails the whole file with a message naming the line."""
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalFileError(source, number, f"is not JSON ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise EvalFileError(source, number, "is not a JSON object")
        missing = [k for k in ("question", "file", "evidence") if not str(data.get(k) or "").strip()]
        if missing:
            raise EvalFileError(source, number, f"has no {', '.join(missing)}")
        try:
            pairs.append(QAPair(question=data["question"], file=data["file"], evidence=data["evidence"]))
        except ValidationError as exc:
            raise EvalFileError(source, number, f"is malformed ({exc.errors()[0]['msg']})") from exc
    if not pairs:
        raise EvalFileError(source, 0, "holds no question")
    return pairs


def check_files(pairs: Sequence[QAPair], known: set[str], source: str = "the evaluation file") -> None:
    """Every pair must name an indexed file; the first that does not fails with its line."""
    for number, pair in enumerate(pairs, start=1):
        if pair.file not in known:
            raise EvalFileError(
                source, number, f"names the file {pair.file!r}, which is not indexed in this collection"
            )


def summarise(mode: Retrieval, top_k: int, rows: Sequence[EvalRow]) -> EvalReport:
    """hit@k, MRR and median latency from per-question rows."""
    n = len(rows)
    hit_at = {str(k): round(sum(1 for r in rows if r.rank and r.rank <= k) / n, 4) for k in CUTOFFS}
    mrr = round(sum(1 / r.rank for r in rows if r.rank) / n, 4)
    p50 = statistics.median(r.seconds for r in rows) * 1000
    return EvalReport(mode=mode, top_k=top_k, n=n, hit_at=hit_at, mrr=mrr, p50_ms=round(p50, 1), rows=list(rows))


async def aevaluate(
    engine: object, pairs: Sequence[QAPair], mode: Retrieval, top_k: int, workspace: str = "default"
) -> EvalReport:
    """Ask every question in one mode, one at a time (so the latency is one question's), and score it."""
    rows = []
    for pair in pairs:
        started = time.perf_counter()
        sources = await engine.aretrieve(pair.question, AskOptions(top_k=top_k, retrieval=mode, workspace=workspace))  # type: ignore[attr-defined]
        seconds = time.perf_counter() - started
        returned = [Returned(file_name=s.file_name, page=s.page, text=s.text, doc_id=s.doc_id) for s in sources]
        rank = first_hit(pair, returned)
        rows.append(EvalRow(question=pair.question, file=pair.file, rank=rank, seconds=seconds, returned=returned))
    return summarise(mode, top_k, rows)


class AnswerRow(BaseModel, frozen=True):
    """How one question's answer fared: evidence share in the whole answer and in its first lines."""

    question: str
    file: str
    rank: int | None
    share: float
    share_first_lines: float
    seconds: float
    answer: str


class AnswerReport(BaseModel, frozen=True):
    """Shares of questions whose answer holds the evidence; the schema of `eval --answers --json`."""

    mode: str
    retrieval: Retrieval
    top_k: int
    n: int
    held: float
    held_half: float
    first_lines: float
    hit_at_k: float
    p50_ms: float
    rows: list[AnswerRow]

    @property
    def misses(self) -> list[AnswerRow]:
        """Questions whose answer does not hold the evidence."""
        return [row for row in self.rows if row.share < HIT_THRESHOLD]


def displayed(markdown: str) -> str:
    """Markdown as a reader sees it: backslash escapes and the invisible word joiners of `escape_markdown`
    removed (`\\_\\_spam` reads `__spam`)."""
    return _ESCAPED.sub(r"\1", markdown).replace("\u2060", "")


def first_lines(text: str, n: int = FIRST_LINES) -> str:
    """The first n non-empty lines of a text."""
    return "\n".join([line for line in text.splitlines() if line.strip()][:n])


def summarise_answers(mode: str, retrieval: Retrieval, top_k: int, rows: Sequence[AnswerRow]) -> AnswerReport:
    """The shares of questions whose answer holds the evidence (80%, 50%, early) and the passages' hit@k."""
    n = len(rows)

    def share(ok: int) -> float:
        return round(ok / n, 4)

    return AnswerReport(
        mode=mode,
        retrieval=retrieval,
        top_k=top_k,
        n=n,
        held=share(sum(r.share >= HIT_THRESHOLD for r in rows)),
        held_half=share(sum(r.share >= HALF_THRESHOLD for r in rows)),
        first_lines=share(sum(r.share_first_lines >= HIT_THRESHOLD for r in rows)),
        hit_at_k=share(sum(r.rank is not None for r in rows)),
        p50_ms=round(statistics.median(r.seconds for r in rows) * 1000, 1),
        rows=list(rows),
    )


async def aevaluate_answers(
    engine: object, pairs: Sequence[QAPair], retrieval: Retrieval, top_k: int, workspace: str = "default"
) -> AnswerReport:
    """Ask every question as a user would (the whole answer, one at a time) and score the answer's text."""
    rows = []
    mode = "retrieval-only"
    for pair in pairs:
        options = AskOptions(top_k=top_k, retrieval=retrieval, workspace=workspace)
        started = time.perf_counter()
        answer = await engine.aanswer(pair.question, (), options)  # type: ignore[attr-defined]
        seconds = time.perf_counter() - started
        mode = answer.mode
        returned = [Returned(file_name=s.file_name, page=s.page, text=s.text, doc_id=s.doc_id) for s in answer.sources]
        rows.append(
            AnswerRow(
                question=pair.question,
                file=pair.file,
                rank=first_hit(pair, returned),
                share=round(evidence_share(pair.evidence, displayed(answer.answer)), 4),
                share_first_lines=round(evidence_share(pair.evidence, first_lines(displayed(answer.answer))), 4),
                seconds=seconds,
                answer=answer.answer,
            )
        )
    return summarise_answers(mode, retrieval, top_k, rows)
