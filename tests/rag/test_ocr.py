"""OCR of scanned PDFs, on files the tests make: text drawn into a PNG and saved as an image-only PDF.

The facts in the scans are made up, so only OCR can have put them in the index.
"""

from __future__ import annotations

import json
import textwrap
import zlib
from collections.abc import Sequence
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

from rag import AskOptions
from rag.errors import IngestError
from rag.ingest import FileProgress, FileStatus, IngestReport, Stage
from rag.ocr import engine, fit_scale, ocr_pdf_page, read_sidecar, sidecar_path
from rag.readers import ReadLimits, read_document

FACTS = (
    "The Quillfeather Observatory on Mount Varenko was founded in 1897 by the astronomer Ottilie Brandmaier. "
    "Its main telescope, nicknamed Copper Heron, has a mirror of 142 centimetres. Every autumn the staff count "
    "exactly 7214 migrating moths in the dome, a ritual they call the Lantern Census."
)
DPI = 200  # the scan's resolution: pixels per inch of the page image
MARGIN = 150  # pixels from the left and top edges to the first line
FONT_PX = 30
LINE_PX = 48


def _font() -> ImageFont.FreeTypeFont:
    """A TrueType font on this machine (DejaVu or Liberation, as Debian ships them)."""
    for candidate in (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ):
        if Path(candidate).is_file():
            return ImageFont.truetype(candidate, FONT_PX)
    found = sorted(Path("/usr/share/fonts").rglob("*.ttf")) if Path("/usr/share/fonts").is_dir() else []
    if found:
        return ImageFont.truetype(str(found[0]), FONT_PX)
    return ImageFont.load_default(FONT_PX)  # Pillow's own TrueType font, on a machine without fonts


def scan_image(paragraphs: Sequence[str]) -> Image.Image:
    """A letter-size page image (200 dpi) with the paragraphs typed on it, black on white."""
    image = Image.new("RGB", (17 * DPI // 2, 11 * DPI), "white")
    draw, font, y = ImageDraw.Draw(image), _font(), MARGIN
    for paragraph in paragraphs:
        for line in textwrap.wrap(paragraph, 75):
            draw.text((MARGIN, y), line, font=font, fill="black")
            y += LINE_PX
        y += LINE_PX // 2
    return image


def write_scanned_pdf(path: Path, pages: Sequence[Sequence[str]]) -> Path:
    """An image-only PDF (no text layer): one page image per entry of `pages`."""
    images = [scan_image(paragraphs) for paragraphs in pages]
    images[0].save(path, "PDF", resolution=DPI, save_all=True, append_images=images[1:])
    return path


def text_pdf(pages: Sequence[Sequence[str]]) -> bytes:
    """A small PDF with a real text layer (Helvetica), one list of lines per page, written by hand."""
    count = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(count))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        stream = "\n".join(["BT /F1 12 Tf 72 720 Td 16 TL", *(f"({line}) Tj T*" for line in lines), "ET"]).encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def write_pdf_with_corrupt_page(path: Path) -> Path:
    """Three text pages whose second page object is overwritten (same length, so the xref still points
    right): pdfium opens the file and pages 1 and 3, and fails to load page 2."""
    good = text_pdf([[f"Ledger page {n} records {n * 111} amber beetles in the cellar."] * 3 for n in (1, 2, 3)])
    start = good.index(b"6 0 obj\n<< /Type /Page") + len(b"6 0 obj\n")
    path.write_bytes(good[:start] + b"[/Broken  " + good[start + 10 :])
    return path


@pytest.fixture(scope="session")
def scanned_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-page scan of the made-up facts."""
    return write_scanned_pdf(tmp_path_factory.mktemp("scans") / "observatory-scan.pdf", [[FACTS]])


def test_the_models_ship_in_the_wheel() -> None:
    """Nothing is downloaded: the engine's three models are files inside the installed package."""
    import rapidocr_onnxruntime

    package = Path(rapidocr_onnxruntime.__file__).parent
    models = sorted(p.name for p in (package / "models").glob("*.onnx"))
    assert any("det" in m for m in models) and any("rec" in m for m in models) and any("cls" in m for m in models)
    assert engine() is engine()  # built once per process


def test_ocr_reads_a_scanned_page_with_spaces_and_boxes_in_page_points(scanned_pdf: Path) -> None:
    pdf = pdfium.PdfDocument(str(scanned_pdf))
    try:
        assert pdf[0].get_textpage().get_text_range().strip() == ""  # really no text layer
        page = ocr_pdf_page(pdf[0], 1)
    finally:
        pdf.close()
    text = " ".join(page.text.split())
    for fact in ("Quillfeather Observatory", "Ottilie Brandmaier", "Copper Heron", "7214", "Lantern Census"):
        assert fact in text, text
    assert (page.page, page.width, page.height) == (1, 612.0, 792.0)
    first = page.lines[0]
    # The first line starts MARGIN pixels from the left and top at DPI: in points, origin bottom-left.
    left, top = MARGIN * 72 / DPI, 792 - MARGIN * 72 / DPI
    assert abs(first.box[0] - left) < 6 and abs(first.box[3] - top) < 8, first.box
    assert first.words[0].text == "The" and first.words[0].box[2] < first.words[1].box[0]
    for line in page.lines:
        for word in line.words:
            left, bottom, right, top = word.box
            assert 0 <= left < right <= 612 and 0 <= bottom < top <= 792


def test_only_pages_without_a_text_layer_are_read_by_ocr(tmp_path: Path, scanned_pdf: Path) -> None:
    typed = tmp_path / "typed.pdf"
    typed.write_bytes(text_pdf([["A typed cover page about the observatory archive."]]))
    mixed = pdfium.PdfDocument(str(typed))
    scan = pdfium.PdfDocument(str(scanned_pdf))
    mixed.import_pages(scan)
    mixed.save(str(tmp_path / "mixed.pdf"))
    mixed.close()
    scan.close()
    calls: list[tuple[int, int]] = []

    result = read_document(tmp_path / "mixed.pdf", "mixed.pdf", on_page=lambda done, total: calls.append((done, total)))

    assert [(d.metadata["page"], d.metadata.get("ocr")) for d in result.documents] == [(1, None), (2, True)]
    assert "Brandmaier" in result.documents[1].text and calls == [(0, 1), (1, 1)]
    assert [p.page for p in result.ocr_pages] == [2] and result.notes == []


def test_ocr_off_refuses_a_scan_naming_the_setting(scanned_pdf: Path) -> None:
    with pytest.raises(IngestError) as err:
        read_document(scanned_pdf, "observatory-scan.pdf", ocr="off")
    assert "observatory-scan.pdf" in err.value.user_message and "RAG_OCR" in err.value.user_message


def test_a_scan_without_text_still_fails_with_a_clear_message(tmp_path: Path) -> None:
    image = Image.new("RGB", (800, 1000), "white")
    ImageDraw.Draw(image).ellipse((200, 300, 600, 700), outline="black", width=6)  # a drawing, no letters
    image.save(tmp_path / "circle.pdf", "PDF", resolution=100)
    with pytest.raises(IngestError) as err:
        read_document(tmp_path / "circle.pdf", "circle.pdf")
    assert "circle.pdf" in err.value.user_message and "OCR found no text" in err.value.user_message


def test_a_corrupt_page_is_skipped_with_a_note_naming_it(tmp_path: Path) -> None:
    path = write_pdf_with_corrupt_page(tmp_path / "ledger.pdf")
    pdf = pdfium.PdfDocument(str(path))
    with pytest.raises(pdfium.PdfiumError):
        pdf[1]  # the fixture really breaks page 2, and only page 2
    assert "Ledger page 3" in pdf[2].get_textpage().get_text_range()
    pdf.close()

    result = read_document(path, "ledger.pdf")

    assert [d.metadata["page"] for d in result.documents] == [1, 3]
    assert len(result.notes) == 1 and result.notes[0].startswith("page 2 could not be read")


@pytest.mark.milvus
def test_a_scanned_pdf_is_indexed_by_ocr_and_answers_questions(service, scanned_pdf: Path, corpus: Path) -> None:  # noqa: ANN001
    updates: list[FileProgress] = []
    report = None
    for item in service.iter_ingest([scanned_pdf, corpus / "paul_graham_essay.txt"]):
        if isinstance(item, IngestReport):
            report = item
        else:
            updates.append(item)
    assert report is not None and [f.status for f in report.files] == [FileStatus.INDEXED] * 2
    ocr = [(u.pages_done, u.pages_total) for u in updates if u.stage == Stage.OCR]
    assert ocr == [(0, 1), (1, 1)]  # the OCR'd page counts in the upload's progress
    record = next(d for d in service.documents() if d.file_name == "observatory-scan.pdf")
    assert record.pages == 1 and sidecar_path(Path(record.stored_path)).is_file()
    assert "Brandmaier" in read_sidecar(Path(record.stored_path))[1].text

    sources = service.retrieve("Who founded the Quillfeather Observatory, and in which year?")

    assert sources[0].file_name == "observatory-scan.pdf" and sources[0].page == 1
    assert "1897" in sources[0].text


@pytest.mark.milvus
def test_a_pdf_with_a_corrupt_page_is_indexed_with_a_note(service, tmp_path: Path) -> None:  # noqa: ANN001
    report = service.ingest([write_pdf_with_corrupt_page(tmp_path / "ledger.pdf")])
    (result,) = report.files
    assert result.status == FileStatus.INDEXED and result.chunks > 0
    assert result.notes == ["page 2 could not be read: Failed to load page."]
    sources = service.retrieve("How many amber beetles does ledger page 3 record?", AskOptions(top_k=2))
    assert {s.page for s in sources} <= {1, 3}


@pytest.mark.milvus
def test_the_cli_indexes_a_scan_and_cites_it(make_settings, monkeypatch, scanned_pdf: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from rag.cli import cli
    from rag.service import RagService

    settings = make_settings()
    for name, value in {
        "MILVUS_URI": settings.milvus_uri,
        "MILVUS_TOKEN": settings.milvus_token.get_secret_value(),
        "RAG_COLLECTION": settings.collection,
        "RAG_DATA_DIR": str(settings.data_dir),
    }.items():
        monkeypatch.setenv(name, value)
    ledger = write_pdf_with_corrupt_page(tmp_path / "ledger.pdf")
    try:
        ingested = CliRunner().invoke(cli, ["ingest", str(scanned_pdf), str(ledger), "--json"], obj={})
        assert ingested.exit_code == 0, ingested.output
        rows = [json.loads(line) for line in ingested.stdout.splitlines()]
        assert [r["status"] for r in rows] == ["indexed", "indexed"]
        assert "notes" not in rows[0] and rows[1]["notes"] == ["page 2 could not be read: Failed to load page."]
        asked = CliRunner().invoke(
            cli, ["ask", "What is the telescope nicknamed Copper Heron's mirror size?", "--json"], obj={}
        )
        assert asked.exit_code == 0, asked.output
        assert json.loads(asked.stdout)["sources"][0]["file_name"] == "observatory-scan.pdf"
    finally:
        svc = RagService(settings)
        svc.runtime.run(svc.store.adrop())
        svc.close()


# -- what one file may cost (RAG_MAX_PAGES, RAG_MAX_PAGE_PIXELS, RAG_OCR_PAGE_SECONDS) --------------------------
GIB = 1024**3


def image_only_pdf(path: Path, pages: int, width: float, height: float) -> Path:
    """A PDF of `pages` scanned-looking pages (an image over the whole page, no text layer) of `width` ×
    `height` points, written by hand: every page shares one 8×8 grey image and one content stream, so even
    3000 pages stay under half a megabyte on disk."""
    image = zlib.compress(bytes([250]) * 64)
    content = f"q {width} 0 0 {height} 0 0 cm /Im0 Do Q".encode()
    kids = " ".join(f"{5 + i} 0 R" for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        b"<< /Type /XObject /Subtype /Image /Width 8 /Height 8 /ColorSpace /DeviceGray /BitsPerComponent 8 "
        b"/Filter /FlateDecode /Length %d >>\nstream\n" % len(image) + image + b"\nendstream",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    objects += [
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] /Resources << /XObject << /Im0 3 0 R >> >> "
        "/Contents 4 0 R >>".encode()
    ] * pages
    out, offsets = bytearray(b"%PDF-1.7\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


def _status_bytes(key: str) -> int:
    """A line of /proc/self/status (VmRSS, VmHWM) in bytes."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def reset_peak_memory() -> int:
    """Reset this process's peak resident memory (VmHWM) to what it holds now, and return that (bytes):
    `_status_bytes("VmHWM")` minus it is then the most memory the process grew by since."""
    Path("/proc/self/clear_refs").write_text("5")  # Linux 4.0+: "5" resets the peak RSS of this process
    return _status_bytes("VmRSS")


def test_fit_scale_lowers_only_what_exceeds_the_pixel_limit() -> None:
    assert fit_scale(612, 792, 2.0, 20_000_000) == 2.0  # a letter page at 144 dpi: 1.9 megapixels
    lowered = fit_scale(2384, 3370, 2.0, 20_000_000)  # A0 at 144 dpi would be 32 megapixels
    assert 1.0 < lowered < 2.0 and 2384 * 3370 * lowered**2 <= 20_000_000 * 1.0001
    assert fit_scale(20_000, 20_000, 2.0, 20_000_000) < 0.25


@pytest.mark.milvus
def test_a_huge_page_and_3000_scanned_pages_fail_alone_within_memory(service, tmp_path: Path) -> None:  # noqa: ANN001
    """Issue 19: a 20000 × 20000-point scanned page and a PDF of 3000 scanned pages each fail with the limit
    named, the rest of the job is indexed, and the process grows by far less than 1 GiB doing it."""
    poster = image_only_pdf(tmp_path / "poster.pdf", 1, 20_000, 20_000)
    archive = image_only_pdf(tmp_path / "archive-scan.pdf", 3000, 612, 792)
    notes = tmp_path / "falcons.txt"
    notes.write_text("Peregrine falcons nest on the cathedral tower every spring. " * 20, encoding="utf-8")
    assert poster.stat().st_size < 2_000 and archive.stat().st_size < 600_000  # small on disk, costly to read
    engine()  # the OCR models load once per process; what the files cost is measured past them

    before = reset_peak_memory()
    report = service.ingest([poster, notes, archive])
    grown = _status_bytes("VmHWM") - before

    by_name = {Path(f.file).name: f for f in report.files}
    assert by_name["falcons.txt"].status == FileStatus.INDEXED
    too_large, too_many = by_name["poster.pdf"], by_name["archive-scan.pdf"]
    assert too_large.status == too_many.status == FileStatus.FAILED
    assert too_large.error.startswith("poster.pdf: page 1 is 20000 × 20000 points")
    assert "RAG_MAX_PAGE_PIXELS" in too_large.error
    assert too_many.error == "archive-scan.pdf: has 3000 pages; the limit is 1000 (RAG_MAX_PAGES)"
    assert {d.file_name for d in service.documents()} == {"falcons.txt"}  # nothing of the failed files is kept
    assert grown < GIB, f"the process grew by {grown / 2**20:.0f} MiB"


def test_the_ocr_time_of_a_page_is_capped(scanned_pdf: Path) -> None:
    with pytest.raises(IngestError) as err:
        read_document(scanned_pdf, "observatory-scan.pdf", limits=ReadLimits(ocr_page_seconds=0.001))
    message = err.value.user_message
    assert message.startswith("observatory-scan.pdf: page 1 took longer than 0.001 s")
    assert "RAG_OCR_PAGE_SECONDS" in message


def test_a_pdf_with_more_pages_than_allowed_fails_before_any_page_is_read(tmp_path: Path) -> None:
    path = tmp_path / "minutes.pdf"
    topics = ("the harbour wall", "winter grit", "the library roof", "bus shelters", "the summer fair")
    path.write_bytes(text_pdf([[f"The council discussed {topic}."] for topic in topics]))
    assert len(read_document(path, "minutes.pdf", limits=ReadLimits(max_pages=5)).documents) == 5
    calls: list[tuple[int, int]] = []
    with pytest.raises(IngestError) as err:
        read_document(path, "minutes.pdf", on_page=lambda *a: calls.append(a), limits=ReadLimits(max_pages=4))
    assert err.value.user_message == "minutes.pdf: has 5 pages; the limit is 4 (RAG_MAX_PAGES)" and calls == []


def test_read_limits_default_to_the_settings_defaults() -> None:
    from rag.config import load_settings

    assert ReadLimits() == ReadLimits.from_settings(load_settings())


# -- numbers and words kept whole (issue 19) --------------------------------------------------------------
NUMBERS = (
    "In 1911 the town counted 4217 people and 1111 houses. See pages 12 13 14 and rows 3 4 5 of table 7, "
    "or call 555 1234 before 07/01/2015."
)


def test_ocr_keeps_a_number_whole_and_numbers_apart(tmp_path: Path) -> None:
    """A digit such as 1 stands apart from its neighbours by a blank wider than the gaps between letters;
    the number stays one word ("1911", not "1 9 1 1"), while numbers a space parts stay apart."""
    scan = write_scanned_pdf(tmp_path / "census.pdf", [[NUMBERS]])
    pdf = pdfium.PdfDocument(str(scan))
    try:
        text = " ".join(ocr_pdf_page(pdf[0], 1).text.split())
    finally:
        pdf.close()
    words = [word.strip(".,") for word in text.split()]
    for number in ("1911", "4217", "1111", "07/01/2015"):
        assert number in words, text
    for apart in ("12 13 14", "3 4 5", "555 1234"):
        assert apart in text, text


def corpus_scan(corpus: Path, path: Path) -> Path:
    """A real typeset page as a scan: the middle column of page 2 of the Federal Register notice (a Boeing
    airworthiness directive) rendered to a 200 dpi image, saved as an image-only PDF. Its text layer says
    "Amendment 39–19512" and "resulting in 157 fatalities"; OCR used to read "39-1 951 2" and "1 57"."""
    source = pdfium.PdfDocument(str(corpus / "federal-register-2020-17221.pdf"))
    try:
        page = source[1]
        assert "39–19512" in page.get_textpage().get_text_range()
        image = page.render(scale=DPI / 72, crop=(215, 440, 217, 217)).to_pil().convert("RGB")
    finally:
        source.close()
    image.save(path, "PDF", resolution=DPI)
    return path


@pytest.mark.milvus
def test_a_number_on_a_scanned_corpus_page_is_found_by_keyword(service, corpus: Path, tmp_path: Path) -> None:  # noqa: ANN001
    scan = corpus_scan(corpus, tmp_path / "boeing-ad-scan.pdf")
    (result,) = service.ingest([scan]).files
    assert result.status == FileStatus.INDEXED
    record = service.documents()[0]
    text = read_sidecar(Path(record.stored_path))[1].text
    assert "19512" in text.replace("-", " ").split() and "157" in text.split(), text

    sources = service.retrieve("Amendment 39-19512", AskOptions(retrieval="keyword", top_k=3))

    assert sources and sources[0].file_name == "boeing-ad-scan.pdf" and "19512" in sources[0].text
