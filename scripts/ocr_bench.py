"""OCR seconds per page and word accuracy at several render scales, on this machine.

Two kinds of image-only pages, so the truth is known: pages typed with PIL (DejaVu Sans, 11 pt at 200 dpi)
and pages of ../shared/corpus/zoo.pdf rendered to 200 dpi images (LaTeX typesetting), whose text layer is
the truth. Each page is OCR'd the way the reader does it (`rag.ocr.ocr_pdf_page`) after one warm-up page.
`s/page` is wall time (what an upload waits; other work on the machine slows it), `cpu s` the process's CPU
time over all its threads (steadier under load; on an idle machine wall is about cpu / cores).

    .venv/bin/python scripts/ocr_bench.py [--scales 1.5,2,3] [--typed 3] [--zoo-pages 2,3] [--json]
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import os
import platform
import statistics
import sys
import textwrap
import time
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pypdfium2 as pdfium  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from rag.ocr import engine, ocr_pdf_page  # noqa: E402

DPI = 200
_VOCABULARY = """observatory lantern census copper heron varenko brandmaier migrating moths mirror telescope autumn
ledger amber beetles cellar quillfeather turnip archive northern valley survey granite bridge harbour keeper
pelican orchard meadow signal station winter supply expedition compass charter council"""
WORDS = _VOCABULARY.split()


def typed_page(seed: int) -> tuple[Image.Image, str]:
    """A letter page of made-up sentences (about 40 lines), and its text."""
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", round(11 * DPI / 72))
    sentences = []
    for i in range(60):
        words = [WORDS[(seed * 7 + i * 5 + k * 3) % len(WORDS)] for k in range(9)]
        sentences.append(f"In {1850 + (seed * 13 + i) % 150} the {' '.join(words)} counted {100 + i * 37}.")
    image = Image.new("RGB", (17 * DPI // 2, 11 * DPI), "white")
    draw, y, lines = ImageDraw.Draw(image), 150, []
    for line in textwrap.wrap(" ".join(s.capitalize() for s in sentences), 80):
        if y > 11 * DPI - 200:
            break
        draw.text((150, y), line, font=font, fill="black")
        lines.append(line)
        y += round(15 * DPI / 72)
    return image, "\n".join(lines)


def zoo_page(corpus: Path, number: int) -> tuple[Image.Image, str]:
    """A page of zoo.pdf as a 200 dpi image, and its text layer."""
    pdf = pdfium.PdfDocument(str(corpus / "zoo.pdf"))
    page = pdf[number - 1]
    image = page.render(scale=DPI / 72).to_pil().convert("RGB")
    text = page.get_textpage().get_text_range()
    pdf.close()
    return image, text


def image_pdf(image: Image.Image) -> pdfium.PdfDocument:
    """The image as a one-page PDF with no text layer, as a scanner would write it."""
    out = io.BytesIO()
    image.save(out, "PDF", resolution=DPI)
    return pdfium.PdfDocument(out.getvalue())


def words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).replace("\ufffe", "").replace("\u00ad", "")
    return [w.strip(".,;:()\"'") for w in text.split() if w.strip(".,;:()\"'")]


def word_accuracy(truth: str, found: str) -> float:
    """Share of the true words found, in order (difflib's matching blocks over word lists)."""
    expected, got = words(truth), words(found)
    matched = sum(b.size for b in difflib.SequenceMatcher(None, expected, got, autojunk=False).get_matching_blocks())
    return matched / max(len(expected), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1.5,2,3", help="render scales to compare (1 = 72 dpi)")
    parser.add_argument("--typed", type=int, default=3, help="pages typed with PIL")
    parser.add_argument("--zoo-pages", default="2,3", help="pages of zoo.pdf to OCR as images")
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()

    pages = [("typed", *typed_page(seed)) for seed in range(args.typed)]
    pages += [("zoo.pdf", *zoo_page(args.corpus, int(n))) for n in args.zoo_pages.split(",") if n]
    docs = [(kind, image_pdf(image), truth) for kind, image, truth in pages]
    engine()
    ocr_pdf_page(docs[0][1][0], 1)  # warm-up: ONNX Runtime's first runs are slower
    rows = []
    for scale in (float(s) for s in args.scales.split(",")):
        for kind in dict.fromkeys(kind for kind, _, _ in docs):
            seconds, cpu_seconds, accuracy = [], [], []
            for _, pdf, truth in (d for d in docs if d[0] == kind):
                started, cpu_started = time.perf_counter(), time.process_time()
                result = ocr_pdf_page(pdf[0], 1, scale=scale)
                seconds.append(time.perf_counter() - started)
                cpu_seconds.append(time.process_time() - cpu_started)
                accuracy.append(word_accuracy(truth, result.text))
            rows.append(
                {
                    "scale": scale,
                    "dpi": round(72 * scale),
                    "pages": kind,
                    "n": len(seconds),
                    "seconds_per_page": round(statistics.mean(seconds), 2),
                    "seconds_min": round(min(seconds), 2),
                    "seconds_max": round(max(seconds), 2),
                    "cpu_seconds_per_page": round(statistics.mean(cpu_seconds), 2),
                    "word_accuracy": round(statistics.mean(accuracy), 4),
                }
            )
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    machine = {"cpu": cpu, "cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}))
        return
    print(f"{cpu}, {machine['cores']} cores, load {machine['load_1min']}")
    print(f"{'scale':>5} {'dpi':>4} {'pages':8} {'n':>2} {'s/page':>7} {'min':>6} {'max':>6} {'cpu s':>6} {'words':>6}")
    for r in rows:
        print(
            f"{r['scale']:>5} {r['dpi']:>4} {r['pages']:8} {r['n']:>2} {r['seconds_per_page']:>7} "
            f"{r['seconds_min']:>6} {r['seconds_max']:>6} {r['cpu_seconds_per_page']:>6} {r['word_accuracy']:>6.1%}"
        )


if __name__ == "__main__":
    main()
