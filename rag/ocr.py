"""OCR of PDF pages that have no text layer (scans), offline, with word boxes for the source viewer.

RapidOCR (`rapidocr-onnxruntime`) runs the PP-OCRv4 detection and recognition models that ship inside its
wheel, on ONNX Runtime: nothing is downloaded. The engine is built once per process on first use; pages are
recognised one at a time (ONNX Runtime already uses every core, and two pages at once on 2 cores would only
fight over them). Callers run this in a worker thread.

The line direction classifier is not used: on long English lines it calls upright text upside down
(score > 0.9) often enough to lose whole lines, and scans of documents have their lines upright.

The recognition model is trained mostly on Chinese and often drops the spaces of English text
("TheQuillfeather"), which would ruin keyword search and embeddings. The spaces are put back from the
image itself: the runs of blank columns in a text line fall into narrow gaps between letters and wide
gaps between words, and the characters (whose positions the recogniser reports) are split at the wide ones.
A blank run narrower than a share of the line's character pitch is never a word gap, however the line's
runs group: digits ("1911", "4217") and letters with wide side bearings stand apart by such runs, and
splitting there would cost keyword search the number or the word (BENCHMARKS.md, "OCR").

What one page may cost is capped: it is rendered at most at `max_pixels` (the scale is lowered to fit, and a
page that would need less than 72 dpi to fit is refused with `PageLimitError`), and its recognition stops
with `PageLimitError` once it has run `seconds`.

Boxes are in PDF page coordinates as pypdfium2 reports them (points, origin bottom-left, `left, bottom,
right, top`), like `PdfTextPage.get_charbox`, so the viewer highlights OCR'd and text-layer pages alike.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pypdfium2 as pdfium

Box = tuple[float, float, float, float]  # left, bottom, right, top in PDF points

# Render scale (1 = 72 dpi). 2 (144 dpi) reads body text as well as 3 at ~60% of the time on 2 cores
# (BENCHMARKS.md, "OCR"); detection cost grows with the pixel count, recognition does not.
OCR_SCALE = 2.0
OCR_MIN_SCALE = 1.0  # 72 dpi: below this, body text is a few pixels high and nothing can be read
_MIN_SCORE = 0.5  # lines the recogniser is less sure of are dropped (RapidOCR's default)
_GAP_RATIO = 0.3  # blank run / ink height that parts two words, when a line has no clear two groups of gaps
# A blank run narrower than this share of the line's character pitch is inside a word; inside a number
# (digits, and the `.`, `,`, `/`, `:` between them), one narrower than half the pitch or a third of the
# line's ink height. Measured on corpus pages rendered to images (BENCHMARKS.md, "OCR").
_JOIN_WORD = 0.35
_JOIN_NUMBER = 0.5
_JOIN_NUMBER_INK = 0.34
_SIDECAR_VERSION = 1

_engine_lock = threading.Lock()
_run_lock = threading.Lock()
_engine: Any = None
# pdfium is not thread-safe, not even across documents: every pdfium call in this process (the PDF reader,
# OCR rendering, the source viewer) is made holding this lock; OCR's inference runs outside it.
PDFIUM_LOCK = threading.RLock()


class PageLimitError(Exception):
    """A page costs more than its limit allows (pixels, OCR time); the message names the limit."""


@dataclass(frozen=True)
class OcrWord:
    """One recognised word and where it is on the page."""

    text: str
    box: Box


@dataclass(frozen=True)
class OcrLine:
    """One recognised text line: its words (with boxes) and the recogniser's confidence."""

    text: str
    score: float
    box: Box
    words: tuple[OcrWord, ...]


@dataclass(frozen=True)
class OcrPage:
    """The text OCR found on one page (1-based `page`, like the reader's metadata)."""

    page: int
    width: float
    height: float
    scale: float
    lines: tuple[OcrLine, ...]

    @property
    def text(self) -> str:
        """The page's text, one recognised line per line, in reading order."""
        return "\n".join(line.text for line in self.lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (boxes as lists)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OcrPage:
        """The page back from `to_json`'s dict."""
        lines = tuple(
            OcrLine(
                text=line["text"],
                score=float(line["score"]),
                box=tuple(line["box"]),  # type: ignore[arg-type]
                words=tuple(OcrWord(w["text"], tuple(w["box"])) for w in line["words"]),  # type: ignore[arg-type]
            )
            for line in data["lines"]
        )
        return cls(int(data["page"]), float(data["width"]), float(data["height"]), float(data["scale"]), lines)


def engine() -> Any:
    """The RapidOCR engine, built once per process (thread-safe); models come from the installed wheel."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                from rapidocr_onnxruntime import RapidOCR

                built = RapidOCR(print_verbose=False)
                for stage in (built.text_det.infer, built.text_rec.session):
                    stage.session = _Timed(stage.session)
                _engine = built
    return _engine


class _OcrTimeout(Exception):
    """The page's OCR time ran out before an inference step."""


_deadline: float | None = None  # monotonic time the current page's OCR must end by (set under _run_lock)


class _Timed:
    """An ONNX Runtime session that refuses to start a step (detection, a batch of lines) once the page's
    OCR time is up, so a page that would recognise for minutes stops within one step of its limit."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if _deadline is not None and time.monotonic() > _deadline:
            raise _OcrTimeout
        return self._session.run(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def fit_scale(width: float, height: float, scale: float, max_pixels: int) -> float:
    """`scale`, lowered so a `width` × `height` points page renders to at most `max_pixels` pixels (each side
    rounded up to whole pixels, as the renderer does)."""
    width, height = max(width, 1.0), max(height, 1.0)
    fitted = scale
    while math.ceil(width * fitted) * math.ceil(height * fitted) > max_pixels:
        fitted = min(fitted * 0.999, math.sqrt(max_pixels / (width * height)))
    return fitted


def ocr_pdf_page(
    page: pdfium.PdfPage,
    number: int,
    scale: float = OCR_SCALE,
    max_pixels: int = 20_000_000,
    seconds: float | None = None,
) -> OcrPage:
    """Render one PDF page and recognise its text; `number` is the 1-based page number.

    The render holds at most `max_pixels` (the scale is lowered to fit; PageLimitError when that would be
    under 72 dpi), and recognition stops with PageLimitError after `seconds` of it (None: no limit).
    """
    with PDFIUM_LOCK:
        width, height = page.get_size()
    fitted = fit_scale(width, height, scale, max_pixels)
    if fitted < min(OCR_MIN_SCALE, scale):
        needed = width * height * OCR_MIN_SCALE**2 / 1e6
        raise PageLimitError(
            f"page {number} is {width:.0f} × {height:.0f} points, too large to read by OCR: at 72 dpi it would "
            f"be {needed:,.0f} megapixels, over the limit of {max_pixels / 1e6:g} (RAG_MAX_PAGE_PIXELS)"
        )
    with PDFIUM_LOCK:
        bitmap = page.render(scale=fitted)
        try:
            image = bitmap.to_numpy().copy()
        finally:
            bitmap.close()
    rows, cols = image.shape[:2]
    try:
        found = ocr_image(image, seconds)
    except _OcrTimeout:
        raise PageLimitError(
            f"page {number} took longer than {seconds:g} s to read by OCR, the limit (RAG_OCR_PAGE_SECONDS)"
        ) from None

    def to_page(x0: float, y0: float, x1: float, y1: float) -> Box:
        corners = [_device_to_page(page, cols, rows, x, y) for x, y in ((x0, y0), (x1, y1))]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        return (round(min(xs), 2), round(min(ys), 2), round(max(xs), 2), round(max(ys), 2))

    with PDFIUM_LOCK:
        lines = [
            OcrLine(
                text=text,
                score=round(score, 4),
                box=to_page(*line_box),
                words=tuple(OcrWord(w, to_page(*b)) for w, b in words),
            )
            for text, score, line_box, words in found
        ]
    return OcrPage(page=number, width=round(width, 2), height=round(height, 2), scale=fitted, lines=tuple(lines))


PixelBox = tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels, origin top-left


def ocr_image(
    image: np.ndarray, seconds: float | None = None
) -> list[tuple[str, float, PixelBox, list[tuple[str, PixelBox]]]]:
    """Recognise an RGB/BGR or grey image: (line text, score, line box, [(word, word box)]) per line.

    With `seconds`, recognition raises _OcrTimeout at the first step it would start that many seconds after
    it began (time spent waiting for another page's recognition does not count)."""
    global _deadline
    import numpy as np

    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    ocr = engine()
    with _run_lock:
        _deadline = deadline = None if seconds is None else time.monotonic() + seconds
        try:
            result, _ = ocr(image, use_cls=False, return_word_box=True, text_score=_MIN_SCORE)
        except Exception:
            if deadline is not None and time.monotonic() > deadline:
                raise _OcrTimeout from None  # ONNX Runtime's wrapper re-raises our refusal as its own error
            raise
        finally:
            _deadline = None
    return recognised_lines(image, result)


def recognised_lines(
    image: np.ndarray, result: list[Any] | None
) -> list[tuple[str, float, PixelBox, list[tuple[str, PixelBox]]]]:
    """RapidOCR's raw result for `image` (lines with character boxes) as lines of words with boxes."""
    import numpy as np

    lines = []
    for det_box, _text, score, char_boxes, chars, *_ in result or []:
        points = np.asarray(det_box, dtype=float)
        line_box = (points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max())
        words = _words(image, line_box, list(chars), [np.asarray(b, dtype=float) for b in char_boxes])
        if not words:
            continue
        lines.append((" ".join(w for w, _ in words), float(score), line_box, words))
    return lines


def _words(
    image: np.ndarray, line_box: PixelBox, chars: list[str], char_boxes: list[np.ndarray]
) -> list[tuple[str, PixelBox]]:
    """Split a line's characters into words at the blank gaps of its image (the recogniser's own spaces
    count too), except where a gap is narrower than a character (`_JOIN_WORD`, `_JOIN_NUMBER`,
    `_JOIN_NUMBER_INK`); each word's box spans its characters' boxes."""
    import numpy as np

    if len(chars) != len(char_boxes) or not chars:
        return []
    x0, y0, x1, y1 = (int(round(v)) for v in line_box)
    crop = image[max(y0, 0) : max(y1, 0) + 1, max(x0, 0) : max(x1, 0) + 1]
    crop = crop.mean(axis=2) if crop.ndim == 3 else crop  # grey, for this line only
    gaps: list[tuple[float, float]] = []
    ink_height = 0.0
    if crop.size:
        ink = crop < min(160.0, (float(crop.min()) + float(crop.max())) / 2)
        rows = np.flatnonzero(ink.any(axis=1))
        ink_height = float(rows[-1] - rows[0] + 1) if rows.size else float(crop.shape[0])
        runs = _blank_runs(~ink.any(axis=0))
        threshold = _gap_threshold([b - a for a, b in runs], ink_height)
        gaps = [(x0 + a, x0 + b) for a, b in runs if b - a >= threshold]
    centres = [float(b[:, 0].mean()) for b in char_boxes]
    pitch = _pitch([c for ch, c in zip(chars, centres) if ch.strip()])
    words: list[tuple[list[str], list[np.ndarray]]] = []
    previous: float | None = None
    for index, (char, box, centre) in enumerate(zip(chars, char_boxes, centres)):
        if not char.strip():
            previous = None  # the recogniser's own space
            continue
        split = previous is None
        if not split and words:
            widths = [b - a for a, b in gaps if previous < (a + b) / 2 < centre]
            if not widths:
                split = False
            elif _in_number(words[-1][0], chars[index : index + 2]):
                split = max(widths) >= max(_JOIN_NUMBER * pitch, _JOIN_NUMBER_INK * ink_height)
            else:
                split = max(widths) >= _JOIN_WORD * pitch
        if split or not words:
            words.append(([], []))
        words[-1][0].append(char)
        words[-1][1].append(box)
        previous = centre
    result = []
    for text_chars, boxes in words:
        points = np.concatenate(boxes)
        result.append(
            ("".join(text_chars), (points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()))
        )
    return result


def _pitch(centres: list[float]) -> float:
    """The line's character pitch: the median distance between neighbouring characters' centres."""
    steps = sorted(b - a for a, b in zip(centres, centres[1:]) if b > a)
    return steps[len(steps) // 2] if steps else 0.0


def _in_number(left: list[str], right: Sequence[str]) -> bool:
    """Whether a gap stands inside a number: digits on both sides, or a `.`, `,`, `/` or `:` between them
    (a comma before the gap is left out: "June 29, 2018" has a real space there)."""
    before, after = "".join(left[-2:]), "".join(right)
    if before[-1:].isdigit():
        return after[:1].isdigit() or (after[:1] in ".,/:" and after[1:2].isdigit())
    return before[-1:] in "./:" and before[-2:-1].isdigit() and after[:1].isdigit()


def _blank_runs(blank: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the runs of blank columns between inked ones (the margins are not gaps)."""
    runs, start = [], None
    for i, empty in enumerate(blank.tolist()):
        if empty and start is None:
            start = i
        elif not empty and start is not None:
            if start > 0:
                runs.append((start, i))
            start = None
    return runs


def _gap_threshold(widths: list[int], ink_height: float) -> float:
    """The blank width that separates words on this line.

    Gaps between letters and gaps between words form two groups; the split that best separates them
    (Otsu's criterion on the widths) is used when the groups are clearly apart, kept within sane bounds of
    the line's ink height (a caps-only line has no ascenders or descenders, so the bounds are loose).
    """
    low_bound, high_bound, fallback = 0.15 * ink_height, 0.5 * ink_height, _GAP_RATIO * ink_height
    values = sorted(w for w in widths if w >= 1)
    if len(values) < 2:
        return max(2.0, fallback)
    best, split = -1.0, 0
    total = sum(values)
    for i in range(1, len(values)):
        low, high = values[:i], values[i:]
        m1, m2 = sum(low) / len(low), (total - sum(low)) / len(high)
        score = len(low) * len(high) * (m2 - m1) ** 2
        if score > best:
            best, split = score, i
    low_mean = sum(values[:split]) / split
    high_mean = sum(values[split:]) / (len(values) - split)
    if high_mean < 1.8 * max(low_mean, 1.0):
        return max(2.0, fallback)
    threshold = (values[split - 1] + values[split]) / 2
    return max(2.0, min(max(threshold, low_bound), high_bound))


def _device_to_page(page: pdfium.PdfPage, cols: int, rows: int, x: float, y: float) -> tuple[float, float]:
    """A pixel of a full-page render (rotation 0) in PDF page coordinates; pdfium applies /Rotate and the
    crop box, so this stays right for rotated and offset pages."""
    import pypdfium2.raw as pdfium_c

    px, py = ctypes.c_double(), ctypes.c_double()
    pdfium_c.FPDF_DeviceToPage(page.raw, 0, 0, cols, rows, 0, int(round(x)), int(round(y)), px, py)
    return px.value, py.value


def sidecar_path(stored_upload: Path) -> Path:
    """Where the OCR'd lines and boxes of a stored upload are kept: beside it, `<upload>.ocr.json`."""
    return stored_upload.with_name(stored_upload.name + ".ocr.json")


def write_sidecar(stored_upload: Path, pages: Sequence[OcrPage]) -> Path:
    """Save the OCR'd pages beside the stored upload (atomically), for the source viewer."""
    target = sidecar_path(stored_upload)
    payload = {"version": _SIDECAR_VERSION, "pages": [p.to_json() for p in pages]}
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    tmp.write_text(json.dumps(payload, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, target)
    return target


def read_sidecar(stored_upload: Path) -> dict[int, OcrPage]:
    """The OCR'd pages of a stored upload by page number; empty when it has none (or an unreadable one)."""
    try:
        payload = json.loads(sidecar_path(stored_upload).read_text(encoding="utf-8"))
        return {page.page: page for page in (OcrPage.from_json(p) for p in payload["pages"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
