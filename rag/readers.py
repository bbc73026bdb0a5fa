"""File → LlamaIndex Documents, one reader per format, each page a Document where the format has pages.

Readers are LlamaIndex `BaseReader`s. PDFs go through pypdfium2 (much faster than pypdf, and it tells
encrypted and text-less files apart); pages without a text layer are read by OCR (`rag/ocr.py`, RAG_OCR).
Every failure is an IngestError naming the file and the reason; a damaged page alone is a note, not a failure.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llama_index.core import Document
from llama_index.core.readers.base import BaseReader

from rag.errors import IngestError
from rag.ocr import PDFIUM_LOCK

if TYPE_CHECKING:
    import pypdfium2 as pdfium

    from rag.config import Settings
    from rag.ocr import OcrPage

log = logging.getLogger(__name__)

_MAX_UNZIPPED = 512 * 1024 * 1024  # a docx/pptx/epub that inflates past this is refused (zip bomb)
_MAX_RATIO = 200


def _decode_text(data: bytes, name: str) -> str:
    if b"\x00" in data[:8192]:
        raise IngestError(name, "looks like binary data, not text")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:  # pragma: no cover - cp1252 fails only on five byte values
        text = data.decode("latin-1")
    controls = sum(1 for ch in text[:20000] if ord(ch) < 32 and ch not in "\r\n\t\f")
    if controls > max(8, len(text[:20000]) // 100):
        raise IngestError(name, "looks like binary data, not text")
    return text


def _check_zip(data: bytes, name: str) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise IngestError(name, "is not a valid Office/EPUB file (damaged zip container)") from exc
    if total > _MAX_UNZIPPED or total > max(len(data), 1) * _MAX_RATIO:
        raise IngestError(name, f"expands to {total / 1e6:.0f} MB when unpacked (zip bomb?); refused")


def _strip_running_lines(pages: list[str]) -> list[str]:
    """Drop running headers and footers: edge lines that recur (digits aside) on many pages."""
    if len(pages) < 4:
        return pages

    def key(line: str) -> str:
        return re.sub(r"\d+", "#", " ".join(line.split()))

    counts: dict[str, int] = {}
    for text in pages:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        for line in {key(ln) for ln in lines[:2] + lines[-2:]}:
            counts[line] = counts.get(line, 0) + 1
    running = {k for k, n in counts.items() if n >= max(3, len(pages) * 0.3)}
    if not running:
        return pages
    cleaned = []
    for text in pages:
        lines = text.splitlines()
        nonblank = [i for i, ln in enumerate(lines) if ln.strip()]
        edges = set(nonblank[:2] + nonblank[-2:])
        cleaned.append("\n".join(ln for i, ln in enumerate(lines) if not (i in edges and key(ln) in running)))
    return cleaned


_SOFT_BREAK = re.compile(r"(\w+)(?:[\ufffe\u00ad]\s*|-[ \t]*\n[ \t]*)(\w+)")
_SOFT_HYPHENS = re.compile(r"[\ufffe\u00ad]")
_WORD = re.compile(r"\w+")
_HYPHENATED = re.compile(r"\w+-\w+")
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*(?:\n\s*)+")


def clean_texts(texts: Sequence[str]) -> list[str]:
    """Text fit for chunking, search and display, for the pages of one file.

    PDF extractors mark a hyphen at a line break (pypdfium2 writes U+FFFE, others a soft hyphen U+00AD or
    a plain "-" and a newline). Such a word is rejoined ("obser-vations" -> "observations") unless the file
    itself spells it with a hyphen elsewhere ("S-Plus", "FAA-approved") or the second half is capitalised;
    the file's own vocabulary decides, so nothing needs a dictionary. Then Unicode is normalised (NFKC:
    ligatures, full-width forms, non-breaking spaces), runs of spaces become one and runs of blank lines two.
    """
    plain = [_SOFT_HYPHENS.sub("", text) for text in texts]
    words = Counter(w.lower() for text in plain for w in _WORD.findall(text))
    hyphenated = {m.lower() for text in plain for m in _HYPHENATED.findall(text)}

    def rejoin(match: re.Match[str]) -> str:
        head, tail = match.group(1), match.group(2)
        if tail[:1].isupper() or tail[:1].isdigit() or head[-1:].isdigit() or (len(head) > 1 and head.isupper()):
            return f"{head}-{tail}"
        if f"{head}-{tail}".lower() in hyphenated and not words.get((head + tail).lower()):
            return f"{head}-{tail}"
        return head + tail

    cleaned = []
    for text in texts:
        text = unicodedata.normalize("NFKC", text.replace("\r\n", "\n").replace("\r", "\n"))
        text = _SOFT_BREAK.sub(rejoin, text)
        text = _SOFT_HYPHENS.sub("", text)
        text = _SPACES.sub(" ", text)
        text = "\n".join(line.rstrip() for line in text.split("\n"))
        cleaned.append(_BLANK_LINES.sub("\n\n", text).strip())
    return cleaned


PageCallback = Callable[[int, int], None]  # on_page(done, total): OCR progress, called from the reading thread


@dataclass(frozen=True)
class ReadLimits:
    """What reading one file may cost; a file past a limit fails alone, with a message naming it.

    `max_pages` (RAG_MAX_PAGES) is checked before any page is read; `max_page_pixels` (RAG_MAX_PAGE_PIXELS)
    bounds a page's render for OCR (the scale is lowered to fit, and a page needing less than 72 dpi to fit
    is refused); `ocr_page_seconds` (RAG_OCR_PAGE_SECONDS) bounds OCR's time on one page.
    """

    max_pages: int = 1000
    max_page_pixels: int = 20_000_000
    ocr_page_seconds: float = 180.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadLimits:
        """The limits configured in `settings`."""
        return cls(settings.max_pages, settings.max_page_pixels, settings.ocr_page_seconds)


class PdfReader(BaseReader):
    """PDF text per page with pypdfium2; `page` metadata is 1-based like a PDF viewer's.

    A page without a text layer is read by OCR when `ocr` is "auto" (its Document says `ocr: True`, and
    its lines and boxes are kept in `ocr_pages` for the source viewer). A page pdfium cannot load is skipped
    with a note naming it, so one damaged page does not cost the rest of the file; a file past its
    `ReadLimits` (too many pages, a scanned page too large or too slow to read) fails, naming the limit.
    """

    def __init__(
        self, ocr: str = "auto", on_page: PageCallback | None = None, limits: ReadLimits | None = None
    ) -> None:
        self.ocr = ocr
        self.on_page = on_page
        self.limits = limits or ReadLimits()
        self.notes: list[str] = []
        self.ocr_pages: list[OcrPage] = []

    def load_data(self, file: Path, extra_info: dict | None = None) -> list[Document]:
        import pypdfium2 as pdfium

        name = (extra_info or {}).get("file_name", file.name)
        self.notes, self.ocr_pages = [], []
        try:
            with PDFIUM_LOCK:
                pdf = pdfium.PdfDocument(str(file))
        except pdfium.PdfiumError as exc:
            reason = str(exc).lower()
            if "password" in reason:
                raise IngestError(name, "is an encrypted PDF; remove the password and upload it again") from exc
            raise IngestError(name, f"is not a readable PDF ({exc})") from exc
        texts: list[str] = []
        scanned: list[int] = []  # pages with no text layer but something drawn on them
        unreadable = 0
        try:
            pages = len(pdf)
            if pages > self.limits.max_pages:
                raise IngestError(name, f"has {pages} pages; the limit is {self.limits.max_pages} (RAG_MAX_PAGES)")
            for index in range(pages):
                try:
                    text, drawn = _page_text(pdf, index)
                except pdfium.PdfiumError as exc:
                    self.notes.append(f"page {index + 1} could not be read: {exc}")
                    unreadable += 1
                    text, drawn = "", False
                texts.append(text)
                if not text.strip() and drawn:
                    scanned.append(index)
            ocr_done = self._ocr(pdf, scanned, texts, name) if scanned and self.ocr == "auto" else set()
        finally:
            with PDFIUM_LOCK:
                pdf.close()
        docs = [
            Document(
                text=text,
                metadata={**(extra_info or {}), "page": index + 1, **({"ocr": True} if index in ocr_done else {})},
            )
            for index, text in enumerate(_strip_running_lines(texts))
            if text.strip()
        ]
        if not docs:
            if unreadable == pages and pages:
                raise IngestError(name, f"has no page that could be read ({self.notes[0]})")
            if scanned and self.ocr != "auto":
                raise IngestError(
                    name, f"has no text layer in its {pages} page(s) (a scan?) and OCR is off (RAG_OCR=off)"
                )
            if scanned:
                raise IngestError(name, f"has no text layer, and OCR found no text in its {pages} page(s)")
            raise IngestError(name, f"has no text layer in its {pages} page(s), and nothing on them to read")
        return docs

    def _ocr(self, pdf: pdfium.PdfDocument, indices: list[int], texts: list[str], name: str) -> set[int]:
        """OCR the given pages into `texts`; return the indices that gave text."""
        from rag.ocr import PageLimitError, ocr_pdf_page

        done: set[int] = set()
        notify = self.on_page or (lambda _done, _total: None)
        notify(0, len(indices))
        for count, index in enumerate(indices, start=1):
            try:
                with PDFIUM_LOCK:
                    page = pdf[index]
                try:
                    result = ocr_pdf_page(
                        page, index + 1, max_pixels=self.limits.max_page_pixels, seconds=self.limits.ocr_page_seconds
                    )
                finally:
                    with PDFIUM_LOCK:
                        page.close()
            except PageLimitError as exc:  # past a limit the file fails, so nobody takes it for read whole
                raise IngestError(name, str(exc)) from exc
            except Exception as exc:  # noqa: BLE001 - one page failing OCR must not cost the others
                log.warning("OCR failed on page %d of %s", index + 1, name, exc_info=True)
                self.notes.append(f"page {index + 1} could not be read by OCR: {type(exc).__name__}")
                result = None
            if result is not None and result.lines:
                texts[index] = result.text
                self.ocr_pages.append(result)
                done.add(index)
            notify(count, len(indices))
        return done


def _page_text(pdf: pdfium.PdfDocument, index: int) -> tuple[str, bool]:
    """A page's text layer, and whether anything at all is drawn on it (a blank page needs no OCR)."""
    import pypdfium2.raw as pdfium_c

    with PDFIUM_LOCK:
        page = pdf[index]
        try:
            textpage = page.get_textpage()
            try:
                text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n")
            finally:
                textpage.close()
            return text, pdfium_c.FPDFPage_CountObjects(page.raw) > 0
        finally:
            page.close()


class TextReader(BaseReader):
    """Plain text, Markdown and anything else that is text; refuses binary data."""

    def load_data(self, file: Path, extra_info: dict | None = None) -> list[Document]:
        name = (extra_info or {}).get("file_name", file.name)
        return [Document(text=_decode_text(file.read_bytes(), name), metadata=dict(extra_info or {}))]


class HtmlReader(BaseReader):
    """Visible text of an HTML page; scripts, styles and navigation are dropped."""

    def load_data(self, file: Path, extra_info: dict | None = None) -> list[Document]:
        from bs4 import BeautifulSoup

        name = (extra_info or {}).get("file_name", file.name)
        soup = BeautifulSoup(_decode_text(file.read_bytes(), name), "html.parser")
        for tag in soup(["script", "style", "noscript", "nav", "template"]):
            tag.decompose()
        lines = [line.strip() for line in soup.get_text("\n").splitlines()]
        text = "\n".join(line for line in lines if line)
        meta = dict(extra_info or {})
        if soup.title and soup.title.string:
            meta["title"] = soup.title.string.strip()[:200]
        return [Document(text=text, metadata=meta)]


class CsvReader(BaseReader):
    """One line per row as `column: value` pairs, so a chunk of rows still says what each value is."""

    def load_data(self, file: Path, extra_info: dict | None = None) -> list[Document]:
        name = (extra_info or {}).get("file_name", file.name)
        rows = csv.reader(io.StringIO(_decode_text(file.read_bytes(), name), newline=""))
        header = next(rows, None)
        if not header:
            return []
        lines = ["; ".join(f"{col}: {val}" for col, val in zip(header, row) if val) for row in rows]
        return [Document(text="\n".join(line for line in lines if line), metadata=dict(extra_info or {}))]


class DocxReader(BaseReader):
    """Word documents through docx2txt, after a zip-bomb check."""

    def load_data(self, file: Path, extra_info: dict | None = None) -> list[Document]:
        import docx2txt

        name = (extra_info or {}).get("file_name", file.name)
        _check_zip(file.read_bytes(), name)
        try:
            text = docx2txt.process(str(file))
        except Exception as exc:  # noqa: BLE001 - docx2txt raises bare KeyErrors on damaged files
            raise IngestError(name, f"is not a readable .docx file ({type(exc).__name__})") from exc
        return [Document(text=text, metadata=dict(extra_info or {}))]


class PptxReader(BaseReader):
    """PowerPoint text per slide; `page` is the slide number."""

    def load_data(self, file: Path, extra_info: dict | None = None) -> list[Document]:
        from pptx import Presentation

        name = (extra_info or {}).get("file_name", file.name)
        _check_zip(file.read_bytes(), name)
        try:
            deck = Presentation(str(file))
        except Exception as exc:  # noqa: BLE001
            raise IngestError(name, f"is not a readable .pptx file ({type(exc).__name__})") from exc
        docs = []
        for number, slide in enumerate(deck.slides, start=1):
            parts = [shape.text_frame.text for shape in slide.shapes if shape.has_text_frame]
            text = "\n".join(p for p in parts if p.strip())
            if text.strip():
                docs.append(Document(text=text, metadata={**(extra_info or {}), "page": number}))
        return docs


class EpubReader(BaseReader):
    """EPUB chapters in reading order; `section` is the chapter's position."""

    def load_data(self, file: Path, extra_info: dict | None = None) -> list[Document]:
        import ebooklib
        from bs4 import BeautifulSoup
        from ebooklib import epub

        name = (extra_info or {}).get("file_name", file.name)
        _check_zip(file.read_bytes(), name)
        try:
            book = epub.read_epub(str(file), options={"ignore_ncx": True})
        except Exception as exc:  # noqa: BLE001
            raise IngestError(name, f"is not a readable EPUB file ({type(exc).__name__})") from exc
        docs = []
        for section, item in enumerate(book.get_items_of_type(ebooklib.ITEM_DOCUMENT), start=1):
            soup = BeautifulSoup(item.get_content(), "html.parser")
            for tag in soup(["script", "style"]):
                tag.decompose()
            lines = [line.strip() for line in soup.get_text("\n").splitlines()]
            text = "\n".join(line for line in lines if line)
            if text:
                docs.append(Document(text=text, metadata={**(extra_info or {}), "section": section}))
        return docs


READERS: dict[str, Callable[[], BaseReader]] = {
    ".pdf": PdfReader,
    ".txt": TextReader,
    ".md": TextReader,
    ".markdown": TextReader,
    ".rst": TextReader,
    ".log": TextReader,
    ".html": HtmlReader,
    ".htm": HtmlReader,
    ".csv": CsvReader,
    ".docx": DocxReader,
    ".pptx": PptxReader,
    ".epub": EpubReader,
}
SUPPORTED_EXTENSIONS = tuple(sorted(READERS))


def file_type(name: str) -> str:
    """The lower-case extension that picks the reader."""
    return Path(name).suffix.lower()


@dataclass
class ReadResult:
    """What reading a file gave: its Documents, notes for the user (pages skipped), and the OCR'd pages."""

    documents: list[Document]
    notes: list[str] = field(default_factory=list)
    ocr_pages: list[OcrPage] = field(default_factory=list)


def read_document(
    path: Path,
    name: str,
    ocr: str = "auto",
    on_page: PageCallback | None = None,
    limits: ReadLimits | None = None,
) -> ReadResult:
    """Read one stored file; `name` is what the user calls it (for messages and metadata).

    `ocr` is RAG_OCR ("auto" reads text-less PDF pages by OCR, "off" does not); `on_page(done, total)` is
    called from this thread as OCR'd pages finish, and may raise to stop reading; `limits` caps what a PDF
    may cost (IngestError naming the limit past them).
    """
    kind = file_type(name)
    if kind not in READERS:
        raise IngestError(
            name,
            f"has an unsupported type {kind or '(none)'!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}",
        )
    reader = PdfReader(ocr=ocr, on_page=on_page, limits=limits) if kind == ".pdf" else READERS[kind]()
    docs = reader.load_data(path, extra_info={"file_name": name})
    for doc, text in zip(docs, clean_texts([doc.text for doc in docs])):
        doc.set_content(text)
    docs = [doc for doc in docs if doc.text.strip()]
    if not any(doc.text.strip() for doc in docs):
        raise IngestError(name, "contains no text")
    if isinstance(reader, PdfReader):
        return ReadResult(docs, list(reader.notes), list(reader.ocr_pages))
    return ReadResult(docs)


def read_file(path: Path, name: str, ocr: str = "auto") -> list[Document]:
    """Read one stored file into Documents (see `read_document`, which also gives notes and OCR boxes)."""
    return read_document(path, name, ocr).documents
