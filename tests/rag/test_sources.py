"""The source viewer's engine: a cited PDF page drawn with the passage highlighted, and a passage in its text."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from rag.errors import RagError
from rag.ocr import write_sidecar
from rag.readers import clean_texts, read_document, read_file
from rag.sources import RENDER_SCALE, passage_context, render_page
from tests.rag.test_ocr import DPI, FACTS, GIB, MARGIN, image_only_pdf, reset_peak_memory, write_scanned_pdf


@pytest.fixture(scope="module")
def zoo_page_one(corpus: Path) -> tuple[Path, str]:
    """zoo.pdf and a passage of its first page as the index stores it (cleaned text)."""
    docs = read_file(corpus / "zoo.pdf", "zoo.pdf")
    first = next(d for d in docs if d.metadata["page"] == 1)
    start = first.text.index("Achim Zeileis")
    return corpus / "zoo.pdf", first.text[start : start + 420]


def _image(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image.convert("RGB")


def _mean(image: Image.Image, rect: tuple[int, int, int, int]) -> tuple[float, float, float]:
    red, green, blue = ImageStat.Stat(image.crop((rect[0], rect[1], rect[2] + 1, rect[3] + 1))).mean
    return red, green, blue


def test_the_cited_zoo_page_is_drawn_with_the_passage_tinted(zoo_page_one: tuple[Path, str]) -> None:
    path, passage = zoo_page_one
    shown = render_page(path, 1, passage)
    plain = render_page(path, 1, "")

    assert shown.found and shown.rects and not shown.ocr and shown.page_count == 30
    assert not plain.found and plain.rects == ()
    image, reference = _image(shown.png), _image(plain.png)
    assert image.size == reference.size == (shown.width, shown.height)
    assert shown.width == round(595.28 * RENDER_SCALE)
    for rect in shown.rects:  # marker yellow: blue drops where the page is white, red stays
        tinted, before = _mean(image, rect), _mean(reference, rect)
        assert before[2] - tinted[2] > 20 and abs(before[0] - tinted[0]) < 25, (rect, before, tinted)
    lowest = max(r[3] for r in shown.rects)
    below = (0, lowest + 5, shown.width - 1, shown.height - 1)
    assert image.crop(below).tobytes() == reference.crop(below).tobytes()  # the rest of the page is untouched
    # The authors' names start the passage: the first highlight is on their line, in the upper third.
    assert shown.rects[0][1] < shown.height / 3


def test_the_passage_is_found_through_cleaning_and_small_differences(zoo_page_one: tuple[Path, str]) -> None:
    path, passage = zoo_page_one
    squeezed = " ".join(passage.split()).replace("Innsbruck", "Inns-\nbruck")
    assert render_page(path, 1, squeezed).found
    words = passage.split()
    words[len(words) // 2] = "XXXXXXXX"  # a word misread, as OCR or a different extractor might
    assert render_page(path, 1, " ".join(words)).found
    assert not render_page(path, 2, passage).found  # not on that page: drawn without a highlight


def test_zoom_scales_the_image_and_renders_are_cached_per_file_version(
    zoo_page_one: tuple[Path, str], tmp_path: Path
) -> None:
    source, passage = zoo_page_one
    path = tmp_path / "zoo.pdf"
    path.write_bytes(source.read_bytes())
    small, large = render_page(path, 1, passage, zoom=0.5), render_page(path, 1, passage, zoom=2.0)
    assert abs(large.width - 4 * small.width) <= 4 and large.found and small.found
    assert render_page(path, 1, passage, zoom=0.5) is small
    os.utime(path, ns=(1, 1))  # another version of the file: drawn again
    assert render_page(path, 1, passage, zoom=0.5) is not small


def test_a_huge_page_is_drawn_within_the_pixel_limit(tmp_path: Path) -> None:
    """A 20000 × 20000-point page at the largest zoom would be 120000 pixels square (57 GB); the viewer draws
    it at the scale that fits RAG_MAX_PAGE_PIXELS, and the process grows by far less than 1 GiB."""
    poster = image_only_pdf(tmp_path / "poster.pdf", 1, 20_000, 20_000)
    before = reset_peak_memory()
    shown = render_page(poster, 1, "", zoom=4.0, max_pixels=20_000_000)
    grown = Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]
    assert shown.width * shown.height <= 20_000_000 and shown.width == shown.height > 4000
    assert int(grown) * 1024 - before < GIB
    small = render_page(poster, 1, "", zoom=1.0, max_pixels=1_000_000)  # the limit is the caller's (settings)
    assert small.width * small.height <= 1_000_000


def test_a_missing_page_is_a_message(zoo_page_one: tuple[Path, str]) -> None:
    path, _ = zoo_page_one
    with pytest.raises(RagError) as err:
        render_page(path, 31, "")
    assert err.value.user_message == "The PDF has no page 31."


def test_an_ocr_page_is_highlighted_from_its_word_boxes(tmp_path: Path) -> None:
    path = write_scanned_pdf(tmp_path / "scan.pdf", [[FACTS]])
    write_sidecar(path, read_document(path, "scan.pdf").ocr_pages)
    passage = clean_texts(["founded in 1897 by the astronomer Ottilie Brandmaier. Its main telescope"])[0]

    shown = render_page(path, 1, passage)

    assert shown.found and shown.ocr
    pixels_per_scan_pixel = RENDER_SCALE * 72 / DPI
    # The passage begins late in the first typed line and goes on at the start of the second (at MARGIN).
    assert len(shown.rects) == 2
    first, second = shown.rects
    assert first[0] > 300 and first[3] < second[1] + 4 and abs(second[0] - MARGIN * pixels_per_scan_pixel) < 8
    assert second[2] < 0.6 * shown.width  # the highlight stops at "telescope", not at the end of the line
    image, plain = _image(shown.png), _image(render_page(path, 1, "").png)
    assert plain.getpixel((second[0] + 2, second[1] + 2))[2] - image.getpixel((second[0] + 2, second[1] + 2))[2] > 20


def test_passage_context_shows_the_passage_where_it_stands(corpus: Path) -> None:
    text = (corpus / "paul_graham_essay.txt").read_text(encoding="utf-8")
    start = text.index("The first programs I tried writing")
    original = text[start : start + 300]
    passage = clean_texts([re.sub(r"\s+", " ", original)])[0]  # as the chunk was stored

    before, found, after = passage_context(text, passage, window=200)

    assert found.split() == original.split() and found == text[start : start + len(found)]
    assert 0 < len(before) <= 201 and text[:start].endswith(before.lstrip("…"))
    assert 0 < len(after) <= 201 and text[start + len(found) :].startswith(after.rstrip("…"))
    assert passage_context(text, "words that are nowhere in the essay at all, zyzzyva") == (
        "",
        "words that are nowhere in the essay at all, zyzzyva",
        "",
    )
