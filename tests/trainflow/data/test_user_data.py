"""A user's own data, as real files: the formats and quirks that are accepted, and a file with
several problems reported in one error (issue 12)."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from trainflow.core.config import DataConfig, TaskConfig
from trainflow.core.errors import DatasetError
from trainflow.data.dataset import inspect_dataset, snapshot_dataset

TASK = TaskConfig(type="classification", labels=["rotten", "fresh"])
N = 30


def _rows(n: int = N) -> list[tuple[str, str]]:
    return [(f"review number {i}, with a comma", ["rotten", "fresh"][i % 2]) for i in range(n)]


def _csv_text(rows, header="text,label", sep=",", newline="\n") -> str:
    lines = [header] + [sep.join(f'"{t}"' if sep in t or "\n" in t else t for t in r) for r in rows]
    return newline.join(lines) + newline


def _check(path: Path, tmp_path: Path, **data) -> pd.DataFrame:
    data.setdefault("min_split_rows", 2)  # small files: these tests are about reading them
    snap = snapshot_dataset(data=DataConfig(path=str(path), **data), task=TASK, seed=0, out_dir=tmp_path / "out")
    assert snap.rows == N and snap.labels == {"rotten": N // 2, "fresh": N // 2}
    return pd.concat(pd.read_parquet(tmp_path / "out" / f"{s}.parquet") for s in ("train", "validation", "test"))


def test_a_csv_with_only_text_and_label_uses_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(_csv_text(_rows()))
    frame = _check(path, tmp_path)
    assert sorted(frame["id"]) == sorted(f"row-{i}" for i in range(1, N + 1))
    assert frame["text"].str.contains(", with a comma").all(), "quoted commas stay inside the text"


def test_an_explicit_id_column_that_is_missing_says_how_to_fix_it(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(_csv_text(_rows()))
    with pytest.raises(DatasetError, match=r"missing id column 'uid' \(data.id_column\).*Leave data.id_column unset"):
        inspect_dataset(data=DataConfig(path=str(path), id_column="uid"), task=TASK, seed=0)


def test_bom_crlf_and_embedded_newlines(tmp_path: Path) -> None:
    rows = [(f"line one\nline two {i}", lab) for i, (_, lab) in enumerate(_rows())]
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbf" + _csv_text(rows, newline="\r\n").encode())
    frame = _check(path, tmp_path)
    assert frame["text"].str.startswith("line one").all() and not frame["text"].str.contains("\ufeff").any()


def test_labels_with_spaces_are_stripped(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(_csv_text([(t, f"  {lab} ") for t, lab in _rows()]))
    _check(path, tmp_path)


def test_integer_labels_are_indices_into_task_labels(tmp_path: Path, caplog) -> None:
    path = tmp_path / "d.csv"
    path.write_text(_csv_text([(t, str(TASK.labels.index(lab))) for t, lab in _rows()]))
    with caplog.at_level(logging.INFO, logger="trainflow.data.dataset"):
        _check(path, tmp_path)
    assert "read as indices into task.labels ['rotten', 'fresh']" in caplog.text


def test_latin1_bytes_are_named_by_row_and_read_with_data_encoding(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(_csv_text([(f"caf\u00e9 {i}", lab) for i, (_, lab) in enumerate(_rows())]).encode("latin-1"))
    with pytest.raises(
        DatasetError, match=r"bytes that are not utf-8 \(re-save the file as UTF-8, or set data.encoding\) in 30 row"
    ):
        inspect_dataset(data=DataConfig(path=str(path)), task=TASK, seed=0)
    frame = _check(path, tmp_path, encoding="latin-1")
    assert frame["text"].str.startswith("caf\u00e9").all()


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "parquet", "csv.gz", "jsonl.gz"])
def test_other_formats(tmp_path: Path, fmt: str) -> None:
    rows = _rows()
    path = tmp_path / f"d.{fmt}"
    if fmt == "tsv":
        path.write_text(_csv_text(rows, header="text\tlabel", sep="\t"))
    elif fmt.startswith("jsonl"):
        body = "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows).encode()
        path.write_bytes(gzip.compress(body) if fmt.endswith(".gz") else body)
    elif fmt == "parquet":
        pd.DataFrame(rows, columns=["text", "label"]).to_parquet(path)
    else:
        path.write_bytes(gzip.compress(_csv_text(rows).encode()))
    _check(path, tmp_path)


def test_one_pass_reports_every_kind_of_problem(tmp_path: Path) -> None:
    rows = _rows(40)
    rows[3] = ("", "fresh")  # empty text
    rows[7] = ("x", "freshh")  # unknown label
    for i in range(10, 35):
        rows[i] = (rows[i][0], "meh")  # 25 unknown labels: 20 shown, 6 more counted
    path = tmp_path / "d.csv"
    ids = [f"r{i % 38}" for i in range(len(rows))]  # r0 and r1 twice
    pd.DataFrame({"id": ids, "text": [t for t, _ in rows], "label": [lab for _, lab in rows]}).to_csv(path, index=False)
    with pytest.raises(DatasetError) as info:
        inspect_dataset(data=DataConfig(path=str(path)), task=TASK, seed=0)
    message = str(info.value)
    assert "nothing was trained" in message
    assert "empty text in column 'text' in 1 row(s): rows 4" in message
    assert "a label that is not one of ['rotten', 'fresh'] in 26 row(s): rows 8 ('freshh'), 11 ('meh')" in message
    assert " and 6 more" in message
    assert "a duplicate id in 2 row(s): rows 39 ('r0', first at row 1), 40 ('r1', first at row 2)" in message
    assert "label histogram: 'meh' 25," in message
    assert not (tmp_path / "out").exists()
