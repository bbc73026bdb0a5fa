"""How often OCR keeps numbers and words whole, with the joining of narrow gaps (rag.ocr) on and off.

Corpus PDF pages are rendered to 200 dpi images (their text layer is the truth), saved as image-only PDFs and
read the way the reader does (rendered at `rag.ocr.OCR_SCALE`, RapidOCR once per page); the same recognition
is then split into words twice: with the engine's rule (a blank narrower than a share of the character pitch,
or for numbers of the ink height, never parts two words) and with it off (every blank run past the line's
threshold parts them, the rule before issue 19). A typed page with numbers that stand apart ("12 13 14",
"555 1234") and numbers that must not be split ("1911", "4217") checks the other direction.

Scores: `numbers` is the share of the truth's runs of 3+ digits found as whole tokens of the OCR text,
`words` the same for words of 4+ letters (counted with repeats).

    .venv/bin/python scripts/ocr_words_bench.py [--pages federal-register-2020-17221.pdf:2,5 ...] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pypdfium2 as pdfium  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

import rag.ocr as ocr  # noqa: E402

DPI = 200
DEV = ["federal-register-2020-17221.pdf:1-7", "WARN-Report-for-7-1-2015-to-03-25-2016.pdf:1-3", "zoo.pdf:2-5",
       "R-intro.pdf:10,20,30"]  # fmt: skip
HELD_OUT = ["federal-register-2020-17221.pdf:8-11", "WARN-Report-for-7-1-2015-to-03-25-2016.pdf:5,9",
            "R-intro.pdf:40,55,70", "zoo.pdf:8,12"]  # fmt: skip
TYPED = [
    "In 1911 the town counted 4217 people and 1111 houses.",
    "See pages 12 13 14 and rows 3 4 5 of table 7.",
    "Call 555 1234 or 555 9876 between 10:30 and 11:45.",
    "Dates 07/01/2015 and 12/31/2016; totals 3,400 and $10,500.",
    "The years 1911 1912 1913 were dry; 71 17 11 1 are numbers.",
]
FONTS = ["dejavu/DejaVuSans.ttf", "dejavu/DejaVuSerif.ttf", "liberation/LiberationSerif-Regular.ttf",
         "liberation/LiberationSans-Regular.ttf"]  # fmt: skip


def page_numbers(spec: str) -> list[int]:
    """`1-3,7` → [1, 2, 3, 7]."""
    numbers = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        numbers += range(int(first), int(last or first) + 1)
    return numbers


def corpus_pages(corpus: Path, specs: list[str]) -> list[tuple[str, Image.Image, str]]:
    """(label, 200 dpi image, text layer) for `file.pdf:pages` specs."""
    pages = []
    for spec in specs:
        name, _, numbers = spec.partition(":")
        pdf = pdfium.PdfDocument(str(corpus / name))
        for number in page_numbers(numbers):
            page = pdf[number - 1]
            pages.append((f"{name}:{number}", page.render(scale=DPI / 72).to_pil().convert("RGB"),
                          page.get_textpage().get_text_range()))  # fmt: skip
        pdf.close()
    return pages


def typed_page() -> tuple[str, Image.Image, str]:
    """The typed lines in each font found on this machine, 11 pt at 200 dpi."""
    fonts = [Path("/usr/share/fonts/truetype") / f for f in FONTS]
    fonts = [f for f in fonts if f.is_file()]
    image = Image.new("RGB", (1700, 200 + 60 * len(TYPED) * len(fonts)), "white")
    draw, y = ImageDraw.Draw(image), 100
    for font_file in fonts:
        font = ImageFont.truetype(str(font_file), round(11 * DPI / 72))
        for line in TYPED:
            draw.text((100, y), line, font=font, fill="black")
            y += 60
    return "typed numbers", image, "\n".join(TYPED * len(fonts))


def scores(truth: str, text: str) -> tuple[int, int, int, int]:
    """(numbers found whole, numbers, words found whole, words)."""
    found = Counter(re.findall(r"\w+", text))
    numbers, words = Counter(re.findall(r"\d{3,}", truth)), Counter(re.findall(r"[A-Za-z]{4,}", truth))
    return (sum(min(n, found[x]) for x, n in numbers.items()), sum(numbers.values()),
            sum(min(n, found[x]) for x, n in words.items()), sum(words.values()))  # fmt: skip


def texts(image: Image.Image) -> tuple[str, str]:
    """The page read as the engine does, split into words with the joining rule and without it."""
    out = io.BytesIO()
    image.save(out, "PDF", resolution=DPI)
    pdf = pdfium.PdfDocument(out.getvalue())
    pixels = pdf[0].render(scale=ocr.OCR_SCALE).to_numpy()[:, :, :3].copy()
    pdf.close()
    result, _ = ocr.engine()(pixels, use_cls=False, return_word_box=True, text_score=0.5)
    rule = (ocr._JOIN_WORD, ocr._JOIN_NUMBER, ocr._JOIN_NUMBER_INK)
    joined = "\n".join(line[0] for line in ocr.recognised_lines(pixels, result))
    try:
        ocr._JOIN_WORD = ocr._JOIN_NUMBER = ocr._JOIN_NUMBER_INK = 0.0
        split = "\n".join(line[0] for line in ocr.recognised_lines(pixels, result))
    finally:
        ocr._JOIN_WORD, ocr._JOIN_NUMBER, ocr._JOIN_NUMBER_INK = rule
    return joined, split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", nargs="*", help="file.pdf:pages specs (default: the dev and held-out sets)")
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()

    sets = {"chosen": args.pages} if args.pages else {"dev": DEV, "held-out": HELD_OUT}
    rows = []
    for label, specs in sets.items():
        pages = corpus_pages(args.corpus, specs)
        rows.append({"set": label, "pages": len(pages), **_measure(pages)})
    rows.append({"set": "typed numbers", "pages": 1, **_measure([typed_page()])})
    machine = {"cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}))
        return
    header = f"{'set':14} {'pages':>5} {'numbers joined':>15} {'numbers split':>14} {'words joined':>13}"
    print(f"{header} {'words split':>12}")
    for r in rows:
        print(f"{r['set']:14} {r['pages']:>5} {r['numbers_joined']:>15.1%} {r['numbers_split']:>14.1%} "
              f"{r['words_joined']:>13.1%} {r['words_split']:>12.1%}")  # fmt: skip


def _measure(pages: list[tuple[str, Image.Image, str]]) -> dict[str, float]:
    totals = {"joined": [0, 0, 0, 0], "split": [0, 0, 0, 0]}
    for _label, image, truth in pages:
        for mode, text in zip(("joined", "split"), texts(image)):
            totals[mode] = [a + b for a, b in zip(totals[mode], scores(truth, text))]
    return {
        f"{kind}_{mode}": round(t[offset] / max(t[offset + 1], 1), 4)
        for mode, t in totals.items()
        for kind, offset in (("numbers", 0), ("words", 2))
    }


if __name__ == "__main__":
    main()
