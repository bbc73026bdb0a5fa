"""Where a cited passage came from: the PDF page drawn with the passage highlighted, or the passage in its
surrounding text for formats without pages. No Streamlit here; the source viewer shows what this returns.

The page image is drawn by pdfium from the PDF itself, never from document text, so nothing a document
says can end up as markup. The passage is found on the page robustly: a chunk's text was cleaned before it
was stored (hyphens at line ends rejoined, spaces collapsed, NFKC), so both sides are reduced to their
letters and digits, lower-cased, and compared; where the exact sequence is not on the page, the long
stretches that match (difflib) mark it. Text-layer pages are highlighted with pdfium's own text rectangles,
OCR'd pages with the word boxes kept beside the upload (`rag.ocr.sidecar_path`).
"""

from __future__ import annotations

import ctypes
import difflib
import functools
import io
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from rag.errors import DocumentNotFoundError, RagError
from rag.ocr import PDFIUM_LOCK, OcrPage, fit_scale, read_sidecar

if TYPE_CHECKING:
    import pypdfium2 as pdfium

    from rag.catalog import DocumentRecord
    from rag.store import DocumentStore

RENDER_SCALE = 1.5  # zoom 1.0 renders at 108 dpi: a letter page 918 px wide, readable in a browser column
MAX_ZOOM = 4.0
HIGHLIGHT = (255, 214, 0, 96)  # translucent yellow, like a marker pen
_MIN_BLOCK = 12  # matched stretches shorter than this (letters and digits) are coincidences
_MIN_COVER = 0.5  # at least this share of the passage must be found on the page to highlight it
_CACHE_SIZE = 48

PixelRect = tuple[int, int, int, int]  # x0, y0, x1, y1 in the PNG, origin top-left


@dataclass(frozen=True)
class RenderedPage:
    """One page as a PNG, with where the passage is highlighted on it."""

    png: bytes
    page: int  # 1-based
    page_count: int
    width: int
    height: int
    found: bool  # the passage was found on the page and highlighted
    rects: tuple[PixelRect, ...]  # highlight rectangles in PNG pixels
    ocr: bool  # the page was read by OCR; the highlight comes from the recognised word boxes


def render_page(
    pdf_path: Path, page_number: int, passage_text: str = "", zoom: float = 1.0, max_pixels: int = 20_000_000
) -> RenderedPage:
    """Render page `page_number` (1-based) of a PDF with `passage_text` highlighted; cached per file version.

    The image holds at most `max_pixels` (RAG_MAX_PAGE_PIXELS): a page too large for the zoom asked is
    drawn at a lower scale. CPU work for pdfium and PIL: call it from a worker thread, not from an event loop.
    """
    path = Path(pdf_path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise RagError(f"{path}: {exc}", user_message="The original file is no longer stored.") from exc
    zoom = round(min(max(zoom, 0.25), MAX_ZOOM), 2)
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, page_number, zoom, passage_text, max_pixels)
    return _render_cached(*key)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _render_cached(
    path: str, _mtime_ns: int, _size: int, page_number: int, zoom: float, passage: str, max_pixels: int
) -> RenderedPage:
    """`render_page` behind a bounded cache keyed by the file's path, mtime and size, page, zoom and passage."""
    import pypdfium2 as pdfium
    from PIL import Image, ImageDraw

    ocr_pages = read_sidecar(Path(path))
    with PDFIUM_LOCK:  # pdfium is not thread-safe: renders, readers and OCR take turns
        try:
            pdf = pdfium.PdfDocument(path)
        except pdfium.PdfiumError as exc:
            raise RagError(f"{path}: {exc}", user_message="The PDF cannot be opened.") from exc
        try:
            count = len(pdf)
            if not 1 <= page_number <= count:
                raise RagError(f"page {page_number} of {count}", user_message=f"The PDF has no page {page_number}.")
            page = pdf[page_number - 1]
            try:
                bitmap = page.render(scale=fit_scale(*page.get_size(), RENDER_SCALE * zoom, max_pixels))
                image = bitmap.to_pil().convert("RGBA")
                bitmap.close()
                ocr_page = ocr_pages.get(page_number)
                boxes = _ocr_boxes(ocr_page, passage) if ocr_page else _text_layer_boxes(page, passage)
                rects = _merge_lines([_to_pixels(page, image.width, image.height, box) for box in boxes])
            finally:
                page.close()
        finally:
            pdf.close()
    if rects:
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        for rect in rects:
            draw.rectangle(rect, fill=HIGHLIGHT)
        image = Image.alpha_composite(image, overlay)
    out = io.BytesIO()
    image.convert("RGB").save(out, "PNG", optimize=False)
    return RenderedPage(
        png=out.getvalue(),
        page=page_number,
        page_count=count,
        width=image.width,
        height=image.height,
        found=bool(rects),
        rects=rects,
        ocr=ocr_page is not None,
    )


def passage_context(text: str, passage: str, window: int = 600) -> tuple[str, str, str]:
    """The passage as it stands in `text` (a document's or page's text), with up to `window` characters
    before and after it, cut at spaces; ("", passage, "") when it cannot be found."""
    span = _find(list(text), passage)
    if span is None:
        return "", passage, ""
    start, end = span[0], span[1] + 1
    before, after = text[max(0, start - window) : start], text[end : end + window]
    if start > window and " " in before:
        before = "…" + before[before.index(" ") + 1 :]
    if end + window < len(text) and " " in after:
        after = after[: after.rindex(" ")] + "…"
    return before, text[start:end], after


def _key(unit: str) -> str:
    """What is compared: letters and digits only, NFKC, lower case (so hyphens, spaces and ligatures vanish)."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", unit).lower() if ch.isalnum())


def _find(units: Sequence[str], passage: str) -> tuple[int, int] | None:
    """The first and last unit (character or word) of `units` that hold the passage, or None."""
    hay, owner = [], []
    for index, unit in enumerate(units):
        key = _key(unit)
        hay.append(key)
        owner.extend([index] * len(key))
    page, needle = "".join(hay), _key(passage)
    if not needle or not page:
        return None
    at = page.find(needle)
    if at >= 0:
        return owner[at], owner[at + len(needle) - 1]
    matcher = difflib.SequenceMatcher(None, page, needle, autojunk=False)
    blocks = [b for b in matcher.get_matching_blocks() if b.size >= _MIN_BLOCK]
    if not blocks or sum(b.size for b in blocks) < _MIN_COVER * len(needle):
        return None
    return owner[blocks[0].a], owner[blocks[-1].a + blocks[-1].size - 1]


def _text_layer_boxes(page: pdfium.PdfPage, passage: str) -> list[tuple[float, float, float, float]]:
    """pdfium's rectangles (one per run of text on a line) for the passage's characters on the page."""
    import pypdfium2.raw as pdfium_c

    textpage = page.get_textpage()
    try:
        chars = [chr(pdfium_c.FPDFText_GetUnicode(textpage.raw, i)) for i in range(textpage.count_chars())]
        span = _find(chars, passage) if passage.strip() else None
        if span is None:
            return []
        count = textpage.count_rects(span[0], span[1] - span[0] + 1)
        return [textpage.get_rect(i) for i in range(count)]
    finally:
        textpage.close()


def _ocr_boxes(page: OcrPage, passage: str) -> list[tuple[float, float, float, float]]:
    """One box per recognised line, spanning the passage's words on it."""
    words = [(line_no, word) for line_no, line in enumerate(page.lines) for word in line.words]
    span = _find([w.text for _, w in words], passage) if passage.strip() else None
    if span is None:
        return []
    lines: dict[int, list[float]] = {}
    for line_no, word in words[span[0] : span[1] + 1]:
        left, bottom, right, top = word.box
        box = lines.setdefault(line_no, [left, bottom, right, top])
        box[:] = [min(box[0], left), min(box[1], bottom), max(box[2], right), max(box[3], top)]
    return [(b[0], b[1], b[2], b[3]) for b in lines.values()]


def _merge_lines(rects: list[PixelRect]) -> tuple[PixelRect, ...]:
    """One rectangle per line: pdfium gives one per run of text (a font change starts a new one)."""
    merged: list[list[int]] = []
    for x0, y0, x1, y1 in rects:
        last = merged[-1] if merged else None
        overlap = min(y1, last[3]) - max(y0, last[1]) if last else 0
        if last and overlap > 0.5 * min(y1 - y0, last[3] - last[1]):
            last[:] = [min(x0, last[0]), min(y0, last[1]), max(x1, last[2]), max(y1, last[3])]
        else:
            merged.append([x0, y0, x1, y1])
    return tuple((r[0], r[1], r[2], r[3]) for r in merged)


def _to_pixels(page: pdfium.PdfPage, cols: int, rows: int, box: tuple[float, float, float, float]) -> PixelRect:
    """A box in PDF points as a rectangle of the full-page render (pdfium applies /Rotate and the crop box)."""
    import pypdfium2.raw as pdfium_c

    xs, ys = [], []
    for x, y in ((box[0], box[1]), (box[2], box[3])):
        dx, dy = ctypes.c_int(), ctypes.c_int()
        pdfium_c.FPDF_PageToDevice(page.raw, 0, 0, cols, rows, 0, x, y, dx, dy)
        xs.append(dx.value)
        ys.append(dy.value)
    pad = 1
    return (
        max(min(xs) - pad, 0),
        max(min(ys) - pad, 0),
        min(max(xs) + pad, cols - 1),
        min(max(ys) + pad, rows - 1),
    )


def source_context(stored: Path, name: str, passage: str, window: int = 600) -> tuple[str, str, str]:
    """`passage_context` over a stored file's whole text (formats without pages); the text is read once per
    file version. CPU work: call it from a worker thread, not from an event loop."""
    path = Path(stored)
    try:
        stat = path.stat()
    except OSError as exc:
        raise RagError(f"{path}: {exc}", user_message="The original file is no longer stored.") from exc
    return passage_context(_document_text(str(path), stat.st_mtime_ns, name), passage, window)


@functools.lru_cache(maxsize=8)
def _document_text(path: str, _mtime_ns: int, name: str) -> str:
    from rag.readers import read_file

    return "\n\n".join(d.text for d in read_file(Path(path), name, ocr="off"))


class Passage(BaseModel, frozen=True):
    """A chunk of a document with the text around it: what a reader (or an MCP client) following a citation
    reads next. `context` is the chunk with up to `around` neighbours each side, overlaps merged; `first_chunk`
    and `last_chunk` are the positions it spans."""

    doc_id: str
    file_name: str
    chunk: int
    page: int | None
    text: str
    context: str
    first_chunk: int
    last_chunk: int
    chunks: int


async def apassage(store: DocumentStore, record: DocumentRecord, chunk: int, around: int = 1) -> Passage:
    """Chunk `chunk` (0-based, as sources give it) of a document with `around` chunks each side."""
    from rag.query import _merge as merge_chunks  # how answers join a hit with its neighbours
    from rag.store import chunk_id

    if not 0 <= chunk < record.chunks:
        raise DocumentNotFoundError(
            f"{record.doc_id} has no chunk {chunk}",
            user_message=f"{record.file_name} has chunks 0 to {record.chunks - 1}, not {chunk}.",
        )
    first, last = max(0, chunk - around), min(record.chunks - 1, chunk + around)
    ids = [chunk_id(record.doc_id, p, record.generation) for p in range(first, last + 1)]
    found = await store.atexts(ids)
    if ids[chunk - first] not in found:
        raise DocumentNotFoundError(
            f"chunk {ids[chunk - first]} is not stored", user_message=f"Chunk {chunk} of {record.file_name} is missing."
        )
    text, page = found[ids[chunk - first]]
    context = text
    for i in range(chunk - first - 1, -1, -1):  # earlier chunks, nearest first
        if ids[i] in found:
            context = merge_chunks(found[ids[i]][0], context)
    for i in range(chunk - first + 1, len(ids)):
        if ids[i] in found:
            context = merge_chunks(context, found[ids[i]][0])
    return Passage(
        doc_id=record.doc_id,
        file_name=record.file_name,
        chunk=chunk,
        page=page,
        text=text,
        context=context,
        first_chunk=first,
        last_chunk=last,
        chunks=record.chunks,
    )


async def adocument_text(store: DocumentStore, record: DocumentRecord, batch: int = 500) -> str:
    """A document's indexed text, its chunks joined in order with their overlaps merged (OCR'd pages included),
    and a `[page N]` line where a new page starts."""
    from rag.query import _merge as merge_chunks
    from rag.store import chunk_id

    ids = [chunk_id(record.doc_id, p, record.generation) for p in range(record.chunks)]
    found: dict[str, tuple[str, int | None]] = {}
    for start in range(0, len(ids), batch):
        found.update(await store.atexts(ids[start : start + batch]))
    parts: list[str] = []
    page: int | None = None
    for i in ids:
        if i not in found:
            continue
        text, chunk_page = found[i]
        if chunk_page is not None and chunk_page != page:
            page = chunk_page
            parts.append(f"\n\n[page {page}]\n{text}")
        elif parts:
            parts[-1] = merge_chunks(parts[-1], text)
        else:
            parts.append(text)
    return "".join(parts).strip()
