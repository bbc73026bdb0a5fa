"""The retrieval-only answer: the one or two short runs of consecutive sentences in the retrieved passages
that best answer the question, each quoted with its [n] citation.

Without a language model an answer can only quote, so what it quotes is chosen the way the passages were:
1. Sentences. Text from PDFs and HTML arrives wrapped at every line; the lines are joined back into
   paragraphs (a heading or a list item stays apart), and pysbd (rule-based, tested on the "Golden Rules"
   of sentence boundaries) cuts the paragraphs at sentence ends, so "U.S. registry", "3.14" or "e.g." stay
   whole. A cut pysbd makes where no sentence ends ("(a) ... and/or (b) ...") or after an abbreviation it
   does not know ("Fed. R. Bankr. P. 2003(e).") is undone. A table without punctuation is cut at its lines.
2. Windows: runs of one to three consecutive sentences of one passage, short (MAX_WINDOW_WORDS), so an
   answer that spans two sentences is quoted whole. A window never starts with a sentence that leans on the
   one before ("This is in contrast ...", "It was renamed because ...", "Therefore, ..."): it takes that
   sentence too (past a bare citation between them), and one that ends with a lead-in (":") takes what the
   lead-in announces. A heading (up to 12 words, no figure past its section number) is quoted alone.
3. Scores: rankings of the windows fused by reciprocal rank fusion, with the k passage retrieval uses:
   BM25 of the window against the question (stemmed words, IDF over the candidate sentences, so words that
   every passage shares count little), dense (the best cosine between the question and a sentence of the
   window), the passage's own rank, and whether the window lies in the chunk that was hit or in the
   neighbouring chunks added for context; plus the answer type a question asks for (a figure for "how
   many/much", "when", a deadline; a reason for "why"), as classic question answering uses it. Sentences are
   scored for what they say: Markdown links count as their labels, addresses not at all. Ties share a rank
   and the next score takes the next rank, so a good sentence shared by many windows does not push the
   others down.
4. The answer: the best window, then the best one that shares no sentence with it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from rag.keyword import STOPWORDS
from rag.store import RRF_K

MAX_WINDOW_SENTENCES = 3
MIN_WINDOW_WORDS = 30  # a shorter run grows by a sentence: a lone sentence often restates the question
MAX_WINDOW_WORDS = 60  # a window of several sentences stays short; one long sentence is still quoted whole
MAX_SENTENCE_WORDS = 80  # longer "sentences" (tables, lists without punctuation) are cut at their lines
MAX_EXTENDED_WORDS = 100  # a window that takes the sentence it leans on may grow to this
MAX_CANDIDATES = 200  # sentences embedded per answer: the hit chunks' first, then their neighbours', best passage first
WINDOWS_SHOWN = 2
_BM25_K1, _BM25_B = 1.2, 0.75

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?:;][\"'”’)\]]*$")
_TERMINAL = re.compile(r"[.!?:;,][\"'”’)\]]*$")
_ITEM_START = re.compile(r"(?:[-*+•·▪◦–]\s|#{1,6}\s|\||>|\d{1,3}[.)]\s|\([a-zA-Z0-9]{1,3}\)\s)")
# Questions whose answer is a quantity, a date or a time: the quote should hold a figure; questions that ask
# why: the quote should give a reason (answer types, as classic question answering uses them).
_ASKS_FIGURE = re.compile(
    r"^\W*when\b|\b(?:deadline|due date)\b|\b(?:how (?:many|much|long|old|often|far|big|large|tall|high|soon|fast)"
    r"|which (?:year|date|day|month|version)"
    r"|what (?:year|date|time|day|month|age|percentage|share|number|price|amount|size|cost|fee|rate|speed|version))\b",
    re.IGNORECASE,
)
_FIGURE = re.compile(r"\d")
_ASKS_REASON = re.compile(r"^\W*why\b|\bwhat (?:is|was|are|were) the reasons?\b|\bhow come\b", re.IGNORECASE)
_REASON = re.compile(
    r"\b(?:because|since|so that|due to|owing to|in order to|as a result|therefore|hence|thus|the reasons?"
    r"|to (?:avoid|ensure|allow|prevent|achieve|enable|make sure)|this is why|that is why)\b",
    re.IGNORECASE,
)
# Sentence openings that point back to the sentence before (pronouns, demonstratives, connectives).
_LEANS_BACK = re.compile(
    r"(?:This|These|That|Those|It|Its|They|Their|Them|Such|Hence|Thus|Therefore|So|But|However|Also|Then|Otherwise"
    r"|Instead|Likewise|Similarly|Furthermore|Moreover|Additionally|Consequently|Accordingly|Nevertheless"
    r"|Nonetheless|Alternatively|Yet|He|She|His|Her|Here|Both|Again"
    r"|In (?:addition|contrast|other words|this|that|these|such)|As a result|For (?:example|instance)"
    r"|The (?:former|latter|same|above|result))\b"
)
# A piece ending in a short capitalised word with a dot, after at most one other word: an abbreviation pysbd
# does not know ("Fed.", "R. Bankr.", "P. 2003(e)."), not a sentence.
_ABBREVIATION_END = re.compile(r"^(?:\S+\s)?[A-Z][A-Za-z]{0,5}\.$")
_MARKDOWN_HEADING = re.compile(r"#{1,6}\s")
_SECTION_NUMBER = re.compile(r"^(?:\d+(?:\.\d+)*\.?|[IVXLC]+\.)\s+")
_LINK = re.compile(r"\[([^\]]*)\]\([^)\s]*\)|<?https?://[^\s>)]+>?")
_PROSE_WORD = re.compile(r"\b[a-z]{3,}\b")
_HEADING_LINE = re.compile(r"#{1,6}\s|\|")  # a Markdown heading or table row ends at its line
_GLUE_START = re.compile(r"[,.;:!?)\]}’”]")
_UPPER_START = re.compile(r"[A-Z0-9“\"(]")


class Passage(Protocol):
    """What the extractor needs of a retrieved passage (rag.query.Source has it)."""

    text: str
    hit_start: int | None
    hit_end: int | None


class Embeds(Protocol):
    """The embedder's interactive calls."""

    async def aembed_query(self, text: str) -> list[float]: ...

    async def aembed(self, texts: list[str], interactive: bool = False) -> list[list[float]]: ...


@dataclass(frozen=True)
class Sentence:
    """One sentence of a passage: its text (whitespace made single) and where it lies in the passage."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Window:
    """Consecutive sentences of one passage (1-based `source`), as quoted in the answer."""

    source: int
    sentences: tuple[Sentence, ...]
    score: float
    ranks: tuple[int, ...] = ()  # its rank in each fused list (lexical, dense, passage, hit chunk), for inspection

    @property
    def text(self) -> str:
        """The sentences joined as one quote."""
        return " ".join(s.text for s in self.sentences)


# -- sentences ------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _segmenter() -> Any:
    import pysbd  # 40 ms of imports, only when a retrieval-only answer is written

    return pysbd.Segmenter(language="en", clean=False)


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def _plain(text: str) -> str:
    """What a sentence says, for scoring: Markdown links read as their labels, bare addresses left out."""
    return _LINK.sub(lambda m: m.group(1) or "", text)


def _bare(sentence: str) -> bool:
    """A piece without prose: a citation ("11 U.S.C. § 521(h)."), a figure, a label."""
    return len(_PROSE_WORD.findall(sentence)) < 2


def _leans_back(sentence: str) -> bool:
    """A sentence that opens by pointing back ("This is why ...", "It was renamed ...", "However, ..."): quoted
    alone it dangles."""
    return bool(_LEANS_BACK.match(sentence.lstrip("“\"'(")))


def _heading(line: str) -> bool:
    """A line that reads as a heading: a Markdown heading, upper case, or at least two longer words nearly all
    capitalised."""
    if line.isupper() or _MARKDOWN_HEADING.match(line):
        return True
    longer = [w for w in line.split() if len(w) > 3 and w[0].isalpha()]
    return len(longer) >= 2 and sum(w[0].isupper() for w in longer) >= 0.7 * len(longer)


def _short_heading(sentence: str) -> bool:
    """A few words that head a section ("Costs of Compliance", "5. VERIFICATION OF DEBTOR IDENTITY"), not a
    sentence; with no figure past its section number, since a title-cased table row ("TaylorMade Golf Company
    Carlsbad 64 Layoff Permanent") is data."""
    return (
        len(sentence.split()) <= 12
        and not _SENTENCE_END.search(sentence)
        and not _FIGURE.search(_SECTION_NUMBER.sub("", sentence))
        and _heading(sentence)
    )


def _hard_break(line: str, following: str) -> bool:
    """Whether a line break ends a paragraph (a heading, a list item, a table row) rather than wraps text.

    Length is no clue: HTML readers put inline code on lines of its own ("Adding the", "CONCURRENTLY", ...)."""
    if _ITEM_START.match(following) or _HEADING_LINE.match(line):
        return True
    if _TERMINAL.search(line) or not _UPPER_START.match(following):
        return False
    return _heading(line)


def _paragraphs(text: str) -> list[tuple[str, list[int], set[int]]]:
    """The text's paragraphs with wrapped lines joined: (joined text, its characters' offsets in the text,
    the joined offsets where a line break was)."""
    lines: list[tuple[int, str]] = []
    offset = 0
    for raw in text.split("\n"):
        stripped = raw.strip()
        lines.append((offset + len(raw) - len(raw.lstrip()), stripped))
        offset += len(raw) + 1
    paragraphs: list[tuple[str, list[int], set[int]]] = []
    block: list[tuple[int, str]] = []

    def flush() -> None:
        if not block:
            return
        pieces: list[str] = []
        origin: list[int] = []
        breaks: set[int] = set()
        for i, (start, line) in enumerate(block):
            if i:
                previous = block[i - 1][1]
                if _hard_break(previous, line):
                    paragraphs.append(("".join(pieces), origin, breaks))
                    pieces, origin, breaks = [], [], set()
                elif not (previous.endswith("-") or _GLUE_START.match(line)):
                    breaks.add(len(origin))
                    pieces.append(" ")
                    origin.append(start - 1)
                else:
                    breaks.add(len(origin))
            pieces.append(line)
            origin.extend(range(start, start + len(line)))
        paragraphs.append(("".join(pieces), origin, breaks))
        block.clear()

    for start, line in lines:
        if line:
            block.append((start, line))
        else:
            flush()
    flush()
    return [p for p in paragraphs if p[0].strip()]


def _cut_long(start: int, end: int, breaks: set[int], text: str) -> list[tuple[int, int]]:
    """A run of text too long to be one sentence, cut at its line breaks, then every MAX_WINDOW_WORDS words."""
    cuts = [start] + sorted(b for b in breaks if start < b < end) + [end]
    spans: list[tuple[int, int]] = []
    for a, b in zip(cuts, cuts[1:]):
        words = list(re.finditer(r"\S+", text[a:b]))
        for i in range(0, len(words), MAX_WINDOW_WORDS):
            group = words[i : i + MAX_WINDOW_WORDS]
            spans.append((a + group[0].start(), a + group[-1].end()))
    return spans


_FALLBACK_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9“\"(])")


def _pieces(joined: str) -> list[tuple[int, int]]:
    """pysbd's sentences as spans of `joined`; where pysbd rewrote the text (it does with ". . ." leaders),
    the paragraph is cut at plain sentence ends instead."""
    spans: list[tuple[int, int]] = []
    position = 0
    for piece in _segmenter().segment(joined):
        start = joined.find(piece, position)
        if start < 0:
            cuts = [0] + [m.end() for m in _FALLBACK_BOUNDARY.finditer(joined)] + [len(joined)]
            return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        position = start + len(piece)
        spans.append((start, position))
    return spans


def sentences(text: str) -> list[Sentence]:
    """The sentences of a passage, in order, with their offsets in it (pieces without a word left out)."""
    found: list[Sentence] = []
    for joined, origin, breaks in _paragraphs(text):
        spans: list[tuple[int, int]] = []
        previous = ""  # pysbd's previous piece
        for start, end in _pieces(joined):
            # A boundary needs white space after it (".RData" or "x.y" inside a sentence is not one), a sentence
            # end before it (pysbd also cuts before enumerations: "(a) ... and/or (b) ...") and no abbreviation.
            if spans and (
                (not joined[spans[-1][1] - 1 : spans[-1][1]].isspace() and not joined[start].isspace())
                or not _SENTENCE_END.search(joined[spans[-1][0] : spans[-1][1]].rstrip())
                or _ABBREVIATION_END.search(previous.strip())
            ):
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
            previous = joined[start:end]
        for start, end in spans:
            piece = joined[start:end]
            start += len(piece) - len(piece.lstrip())
            end -= len(piece) - len(piece.rstrip())
            if start >= end:
                continue
            parts = [(start, end)]
            if len(joined[start:end].split()) > MAX_SENTENCE_WORDS:
                parts = _cut_long(start, end, breaks, joined)
            for a, b in parts:
                words = " ".join(joined[a:b].split())
                if _WORD.search(words):
                    found.append(Sentence(words, origin[a], origin[b - 1] + 1))
    return found


# -- scoring --------------------------------------------------------------------------------------------
def terms(text: str) -> list[str]:
    """Stemmed, lower-case content words (BM25's terms)."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    return _stemmer().stemWords(words)


def _ranks(scores: Sequence[float]) -> list[int]:
    """Ranks by distinct score (1 = best; equal scores share a rank and the next score takes the next rank), so
    that a sentence shared by many windows does not push the others down."""
    level = {score: i for i, score in enumerate(sorted(set(scores), reverse=True), start=1)}
    return [level[score] for score in scores]


def _in_hit(passage: Passage, sentence: Sentence) -> bool:
    """Whether the sentence lies in the chunk that was hit (not in the neighbours added for context)."""
    start, end = passage.hit_start, passage.hit_end
    return start is None or end is None or (sentence.start < end and sentence.end > start)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def _bm25(
    query: set[str], windows: Sequence[Counter[str]], lengths: Sequence[int], idf: dict[str, float]
) -> list[float]:
    average = sum(lengths) / len(lengths) if lengths else 1.0
    scores = []
    for counts, length in zip(windows, lengths):
        score = 0.0
        for term in query:
            tf = counts.get(term, 0)
            if tf:
                norm = _BM25_K1 * (1 - _BM25_B + _BM25_B * length / (average or 1.0))
                score += idf.get(term, 0.0) * tf * (_BM25_K1 + 1) / (tf + norm)
        scores.append(score)
    return scores


def _completed(
    p: int, a: int, b: int, sents: Sequence[Sentence], lengths: Sequence[int], ends: Sequence[bool]
) -> tuple[int, int, int]:
    """A window that takes the sentence its first sentence leans on (past bare citations) and the sentence its
    lead-in announces, unless that makes it longer than MAX_EXTENDED_WORDS."""
    start, stop = a, b
    if a > 0 and ends[a] and ends[a - 1] and _leans_back(sents[a].text):
        a -= 1
        while a > 0 and ends[a - 1] and _bare(sents[a].text):
            a -= 1
    if b < len(sents) and ends[b - 1] and ends[b] and sents[b - 1].text.endswith(":"):
        b += 1
    if (a, b) != (start, stop) and sum(lengths[a:b]) > MAX_EXTENDED_WORDS:
        return p, start, stop
    return p, a, b


def _windows(split: Sequence[Sequence[Sentence]]) -> list[tuple[int, int, int]]:
    """(passage index, first sentence, last sentence + 1) of every window: runs of consecutive sentences that
    reach MIN_WINDOW_WORDS (or cannot grow further), of at most MAX_WINDOW_SENTENCES and MAX_WINDOW_WORDS, and
    that hold no short heading (a heading is quoted alone), completed by `_completed`."""
    found: dict[tuple[int, int, int], None] = {}
    for p, sents in enumerate(split):
        lengths = [len(s.text.split()) for s in sents]
        ends = [not _short_heading(s.text) for s in sents]
        # inside a window too, but a two-word "heading" may be a table's cells ("Layoff Permanent")
        inner = [e or len(s.text.split()) < 3 for e, s in zip(ends, sents)]
        for i in range(len(sents)):
            words = 0
            for j in range(i, min(i + MAX_WINDOW_SENTENCES, len(sents))):
                words += lengths[j]
                if j > i and words > MAX_WINDOW_WORDS:
                    break
                room = j + 1 - i < MAX_WINDOW_SENTENCES
                can_grow = j + 1 < len(sents) and room and words + lengths[j + 1] <= MAX_WINDOW_WORDS
                if j > i and not (ends[i] and ends[j] and all(inner[i : j + 1])):
                    continue  # a heading is quoted alone, never glued to the sentences around it
                if words >= MIN_WINDOW_WORDS or not can_grow:
                    found[_completed(p, i, j + 1, sents, lengths, ends)] = None
    return list(found)


async def abest_windows(question: str, passages: Sequence[Passage], embedder: Embeds) -> list[Window]:
    """The windows to quote, best first (at most WINDOWS_SHOWN), none sharing a sentence."""
    chosen: list[Window] = []
    used: set[str] = set()
    for window in await arank_windows(question, passages, embedder):
        if any(s.text in used for s in window.sentences):
            continue
        chosen.append(window)
        used.update(s.text for s in window.sentences)
        if len(chosen) == WINDOWS_SHOWN:
            break
    return chosen


async def arank_windows(question: str, passages: Sequence[Passage], embedder: Embeds) -> list[Window]:
    """Every window of the passages, best first."""
    split = [sentences(p.text) for p in passages]
    # Each distinct sentence is embedded once, at most MAX_CANDIDATES of them: those of the chunks that were hit
    # first (best passage first), then those of the neighbouring chunks.
    distinct: dict[str, int] = {}
    queue = sorted(
        ((0 if _in_hit(passages[p], s) else 1, p, s.text) for p, sents in enumerate(split) for s in sents),
        key=lambda item: item[:2],
    )
    for _, _, text in queue:
        if text not in distinct and len(distinct) < MAX_CANDIDATES:
            distinct[text] = len(distinct)
    split = [[s for s in sents if s.text in distinct] for sents in split]
    spans = _windows(split)
    if not spans:
        return []
    plain = {text: " ".join(_plain(text).split()) or text for text in distinct}
    vectors = await embedder.aembed([plain[text] for text in distinct], interactive=True)
    q = await embedder.aembed_query(question)
    cosine = [_cosine(q, v) for v in vectors]

    sentence_terms = {text: terms(plain[text]) for text in distinct}
    n = len(sentence_terms)
    df = Counter(t for ts in sentence_terms.values() for t in set(ts))
    idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
    query = set(terms(question)) or set(_WORD.findall(question.lower()))
    window_terms = [Counter(t for s in split[p][a:b] for t in sentence_terms[s.text]) for p, a, b in spans]
    lengths = [sum(counts.values()) for counts in window_terms]
    lexical = _bm25(query, window_terms, lengths, idf)
    dense = [max(cosine[distinct[s.text]] for s in split[p][a:b]) for p, a, b in spans]
    in_hit = []
    for p, a, b in spans:
        start, end = passages[p].hit_start, passages[p].hit_end
        inside = start is None or end is None or (split[p][a].start < end and split[p][b - 1].end > start)
        in_hit.append(1 if inside else 2)
    rankings = list(zip(_ranks(lexical), _ranks(dense), [p + 1 for p, _, _ in spans], in_hit))
    if _ASKS_FIGURE.search(question):  # one more ranking: the windows that hold a figure first
        fits = [1 if any(_FIGURE.search(s.text) for s in split[p][a:b]) else 2 for p, a, b in spans]
        rankings = [(*r, f) for r, f in zip(rankings, fits)]
    if _ASKS_REASON.search(question):  # or those that give a reason
        fits = [1 if any(_REASON.search(s.text) for s in split[p][a:b]) else 2 for p, a, b in spans]
        rankings = [(*r, f) for r, f in zip(rankings, fits)]
    fused = [sum(1 / (RRF_K + r) for r in ranks) for ranks in rankings]
    # Best first; on a tie the shorter window.
    order = sorted(range(len(spans)), key=lambda i: (-fused[i], spans[i][2] - spans[i][1], i))
    return [
        Window(
            source=spans[i][0] + 1,
            sentences=tuple(split[spans[i][0]][spans[i][1] : spans[i][2]]),
            score=round(fused[i], 4),
            ranks=rankings[i],
        )
        for i in order
    ]
