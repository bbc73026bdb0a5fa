import zipfile
from pathlib import Path

import pytest

from rag.errors import IngestError
from rag.readers import read_file


def test_pdf_pages_are_numbered_from_one(corpus: Path) -> None:
    docs = read_file(corpus / "zoo.pdf", "zoo.pdf")
    assert docs[0].metadata["page"] == 1 and docs[-1].metadata["page"] == 30
    assert "S3 Class" in docs[0].text


@pytest.mark.parametrize(
    "name",
    [
        "doj_ust_chapter13_trustee_handbook_2012.docx",
        "postgresql15_ddl-partitioning.html",
        "titanic_train.csv",
        "winter-sports-in-switzerland_benson.epub",
        "pdfplumber_README.md",
        "paul_graham_essay.txt",
    ],
)
def test_every_corpus_format_reads_text(corpus: Path, name: str) -> None:
    docs = read_file(corpus / name, name)
    text = " ".join(d.text for d in docs)
    assert len(text.split()) > 500
    assert "<html" not in text.lower() and "\x00" not in text


def test_html_drops_scripts(tmp_path: Path) -> None:
    page = tmp_path / "p.html"
    page.write_text("<html><head><script>alert(1)</script></head><body><p>Visible words here</p></body></html>")
    text = read_file(page, "p.html")[0].text
    assert "Visible words here" in text and "alert" not in text


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("corrupt.pdf", b"%PDF-1.4 this is not really a pdf", "not a readable PDF"),
        ("binary.txt", bytes(range(256)) * 4, "binary"),
        ("bad.docx", b"PK\x03\x04 not a zip", "not a valid"),
        ("notes.xyz", b"hello", "unsupported type"),
        ("blank.txt", b"   \n\n  ", "no text"),
    ],
)
def test_bad_files_name_file_and_reason(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(IngestError) as err:
        read_file(path, name)
    assert name in err.value.user_message and reason in err.value.user_message


def test_zip_bomb_docx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", b"\0" * (50 * 1024 * 1024))
    with pytest.raises(IngestError) as err:
        read_file(path, "bomb.docx")
    assert "zip bomb" in err.value.user_message


def test_clean_texts_rejoins_line_break_hyphens_by_the_files_own_words() -> None:
    from rag.readers import clean_texts

    pages = [
        "matrix of obser\ufffevations and more observations; the S\ufffePlus system",
        "pack\u00adages of FAA\ufffeapproved parts; a well-\nknown well-known fact;  ﬁne   print\n\n\n\nend",
    ]
    first, second = clean_texts(pages)
    assert first == "matrix of observations and more observations; the S-Plus system"
    assert second == "packages of FAA-approved parts; a well-known well-known fact; fine print\n\nend"
