"""`trainflow predict`: a verified package's predictions for texts given on the command line or in
a file, written as JSONL or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trainflow.release.loader import PackageModel

OUTPUT_KINDS = (".jsonl", ".ndjson", ".csv")


class PredictInputError(ValueError):
    """Bad input to `trainflow predict`: one line, naming the problem."""


def inputs_from_arguments(model: PackageModel, texts: list[str]) -> list[Any]:
    """Command-line texts; a pair model's are `text<TAB>pair text`."""
    if not model.metadata.text_pair:
        return list(texts)
    pairs = []
    for i, t in enumerate(texts, start=1):
        if t.count("\t") != 1:
            raise PredictInputError(f"argument {i}: this model reads text pairs; give each as 'text<TAB>pair text'"
                                    " (in bash: $'first\\tsecond'), or use --input with a pair column")  # fmt: skip
        a, b = t.split("\t")
        pairs.append((a, b))
    return pairs


def inputs_from_file(
    model: PackageModel, path: Path, *, text_column: str | None, pair_column: str | None, id_column: str | None
) -> tuple[list[str] | None, list[Any]]:
    """(ids or None, texts or pairs) of a CSV/TSV/JSONL/Parquet file; the columns default to those
    the package was trained with (its config's data.text_column and data.text_pair_column)."""
    from trainflow.data.dataset import read_table

    data = model.metadata.config.get("data", {})
    text_column = text_column or data.get("text_column") or "text"
    if model.metadata.text_pair:
        pair_column = pair_column or data.get("text_pair_column")
    elif pair_column:
        raise PredictInputError(f"--pair-column {pair_column!r}: this model reads single texts, not pairs")
    table = read_table(path)
    wanted = [c for c in (text_column, pair_column, id_column) if c]
    if missing := [c for c in wanted if c not in table.columns]:
        raise PredictInputError(f"{path}: missing column(s) {missing}; the file has {list(table.columns)} (name yours"
                                " with --text-column, --pair-column, --id-column)")  # fmt: skip
    if len(table) == 0:
        raise PredictInputError(f"{path}: no rows")
    columns = [text_column] + ([pair_column] if pair_column else [])
    empty = [i + 1 for i in range(len(table)) if any(not isinstance(table[c].iloc[i], str) or not table[c].iloc[i].strip()
                                                     for c in columns)]  # fmt: skip
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise PredictInputError(f"{path}: empty text in {len(empty)} row(s): rows {shown}")
    texts = table[text_column].tolist()
    inputs: list[Any] = texts if not pair_column else list(zip(texts, table[pair_column].tolist(), strict=True))
    ids = table[id_column].astype(str).tolist() if id_column else None
    return ids, inputs


def predict_all(model: PackageModel, inputs: list[Any], batch_size: int, progress: Callable[[int], None]) -> list[Any]:
    """Every prediction, `batch_size` texts a call (`progress` told after each call)."""
    for i, x in enumerate(inputs, start=1):
        for t in [x] if isinstance(x, str) else x:
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise PredictInputError(
                    f"input {i} is not valid Unicode (undecodable bytes or a lone surrogate)"
                ) from None
    out: list[Any] = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        out += model.predict(chunk, batch_size=batch_size)
        progress(len(chunk))
    return out


def records(model: PackageModel, inputs: list[Any], predictions: list[Any], ids: list[str] | None) -> list[dict]:
    """One JSON-ready record per input: its id, its text(s) and the prediction's fields."""
    out = []
    for i, (x, p) in enumerate(zip(inputs, predictions, strict=True)):
        row: dict[str, Any] = {} if ids is None else {"id": ids[i]}
        row.update({"text": x} if isinstance(x, str) else {"text": x[0], "text_pair": x[1]})
        out.append({**row, **asdict(p)})
    return out


def write(rows: list[dict], labels: list[str], output: Path | None) -> str | None:
    """JSONL (one record per line) or CSV (probabilities as p_<label> columns, a label set joined
    by ';') to `output`; without one, the JSONL text is returned (for stdout)."""
    kind = ".jsonl" if output is None else "".join(output.suffixes[-1:]).lower()
    if kind not in OUTPUT_KINDS:
        raise PredictInputError(f"--output {output}: write .jsonl or .csv")
    if kind != ".csv":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if output is None:
            return text
        output.write_text(text, encoding="utf-8")
        return None
    flat = []
    for r in rows:
        r = dict(r)
        probs = r.pop("probabilities", None) or {}
        if "labels" in r:
            r["labels"] = ";".join(r["labels"])
        flat.append({**r, **{f"p_{name}": probs.get(name) for name in labels if probs}})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(flat[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    output.write_text(buf.getvalue(), encoding="utf-8")  # type: ignore[union-attr]
    return None
