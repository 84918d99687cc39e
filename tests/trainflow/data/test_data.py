from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.tiny import ROOT
from trainflow.core.config import DataConfig, TaskConfig
from trainflow.core.errors import DatasetError
from trainflow.data.dataset import load_split, snapshot_dataset

TASK = TaskConfig(type="classification", labels=["neg", "pos"])


def _csv(tmp_path: Path, rows: list[dict], name: str = "d.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _rows(n: int = 40) -> list[dict]:
    return [{"id": f"r{i}", "text": f"review number {i} is {'good' if i % 2 else 'bad'}", "label": ["neg", "pos"][i % 2]}
            for i in range(n)]  # fmt: skip


def _snap(path: Path, tmp_path: Path, task: TaskConfig = TASK, **data):
    data.setdefault("min_split_rows", 2)  # small files: these tests are about reading and splitting them
    return snapshot_dataset(data=DataConfig(path=str(path), **data), task=task, seed=1, out_dir=tmp_path / "out")


def test_snapshot_is_deterministic_and_checksummed(tmp_path: Path) -> None:
    path = _csv(tmp_path, _rows(200))
    a = _snap(path, tmp_path, calibration_size=10)
    b = _snap(path, tmp_path, calibration_size=10)
    assert a.version == b.version and a.sha256 == b.sha256 and len(a.sha256) == 64
    assert sum(a.splits[s] for s in ("train", "validation", "test")) == 200
    assert a.splits["calibration"] == 10
    assert load_split(a, "test").ids == load_split(b, "test").ids
    splits = {s: set(load_split(a, s).ids) for s in ("train", "validation", "test")}
    assert not (splits["train"] & splits["test"]) and not (splits["train"] & splits["validation"])
    assert set(load_split(a, "calibration").ids) <= splits["train"]
    assert json.loads((tmp_path / "out" / "snapshot.json").read_text())["labels"] == {"neg": 100, "pos": 100}


def test_changed_bytes_change_the_version(tmp_path: Path) -> None:
    rows = _rows(60)
    a = _snap(_csv(tmp_path, rows), tmp_path)
    rows[0]["text"] += "!"
    b = _snap(_csv(tmp_path, rows), tmp_path)
    assert a.version != b.version


def test_jsonl_gz_and_parquet_inputs(tmp_path: Path) -> None:
    rows = _rows(60)
    jl = tmp_path / "d.jsonl.gz"
    with gzip.open(jl, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    pq = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    assert _snap(jl, tmp_path).rows == _snap(pq, tmp_path).rows == 60


@pytest.mark.parametrize(
    ("mutate", "message", "row"),
    [
        (
            lambda rows: [{k: v for k, v in r.items() if k != "label"} for r in rows],
            r"missing column\(s\) \['label'\]",
            None,
        ),
        (
            lambda rows: rows[:5] + [{**rows[5], "text": "   "}] + rows[6:],
            "empty text in column 'text' in 1 row.s.: rows 6",
            6,
        ),
        (
            lambda rows: rows[:2] + [{**rows[2], "label": "meh"}] + rows[3:],
            r"a label that is not one of \['neg', 'pos'\] in 1 row.s.: rows 3 \('meh'\)",
            3,
        ),
        (
            lambda rows: rows + [{**rows[0], "text": "another text"}],
            r"a duplicate id in 1 row.s.: rows 41 \('r0', first at row 1\)",
            41,
        ),
        (lambda rows: [{**r, "label": "pos"} for r in rows], "every row has the same label", None),
        (lambda rows: rows[:4], "too little data to judge a model", None),
    ],
    ids=["missing-column", "empty-text", "unknown-label", "duplicate-id", "one-label", "too-few-rows"],
)
def test_bad_data_names_file_row_and_problem(tmp_path: Path, mutate, message: str, row: int | None) -> None:
    path = _csv(tmp_path, mutate(_rows()))
    with pytest.raises(DatasetError, match=message) as info:
        _snap(path, tmp_path)
    assert info.value.path == str(path)
    assert info.value.row == row
    assert not (tmp_path / "out").exists(), "nothing may be written for bad data"


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"id,text,label\nr1,fine,neg\nr2,caf\xe9 latin-1,pos\n")
    with pytest.raises(DatasetError, match=r"bytes that are not utf-8 .* in 1 row.s.: rows 2"):
        _snap(path, tmp_path)


def test_duplicate_ids_across_given_splits(tmp_path: Path) -> None:
    rows = [{**r, "split": ["train", "validation", "test"][i % 3]} for i, r in enumerate(_rows(30))]
    rows.append({**rows[1], "split": "test", "text": "leaked"})
    with pytest.raises(
        DatasetError, match=r"a duplicate id across splits \['test', 'validation'\] in 1 row.s.: rows 31 \('r1'"
    ):
        _snap(_csv(tmp_path, rows), tmp_path)


def test_float_labels_for_classification(tmp_path: Path) -> None:
    """Whole-number floats (Parquet often stores integers so) are label indices; 0.5 is no class."""
    rows = [{**r, "label": float(i % 2)} for i, r in enumerate(_rows())]
    path = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(path)
    assert _snap(path, tmp_path).labels == {"neg": 20, "pos": 20}
    pd.DataFrame([*rows[:-1], {**rows[-1], "label": 0.5}]).to_parquet(path)
    with pytest.raises(DatasetError, match=r"a label that is not one of .* rows 40 \('0.5'\)"):
        _snap(path, tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file does not exist"):
        _snap(tmp_path / "none.csv", tmp_path)


def test_shipped_datasets_load(tmp_path: Path) -> None:
    root = ROOT / "data"
    rt = _snap(
        root / "rotten_tomatoes.csv.gz", tmp_path, task=TaskConfig(type="classification", labels=["rotten", "fresh"])
    )
    assert rt.rows == 4000
    drug = _snap(root / "drug_reviews.csv.gz", tmp_path,
                 task=TaskConfig(type="ordinal", labels=["negative", "neutral", "positive"]))  # fmt: skip
    assert drug.rows == 979 and set(drug.labels) == {"negative", "neutral", "positive"}


def test_data_too_small_to_judge_a_model_is_refused_naming_the_options(tmp_path: Path) -> None:
    path = _csv(tmp_path, _rows(30))
    with pytest.raises(DatasetError) as err:
        snapshot_dataset(data=DataConfig(path=str(path)), task=TASK, seed=1, out_dir=tmp_path / "out")
    message = str(err.value)
    assert "validation split has" in message and "test split has" in message and "data.min_split_rows 50" in message
    assert not (tmp_path / "out").exists(), "nothing is written"


def test_a_class_with_too_few_training_rows_is_refused(tmp_path: Path) -> None:
    rows = _rows(200)
    rows[5]["split"] = rows[7]["split"] = "test"  # the only 'odd' rows, in the test split alone
    rows[5]["label"] = rows[7]["label"] = "odd"
    for i, r in enumerate(rows):
        r.setdefault("split", ["train", "train", "train", "validation", "test"][i % 5])
    path = _csv(tmp_path, rows)
    task = TaskConfig(type="classification", labels=["neg", "pos", "odd"])
    with pytest.raises(
        DatasetError, match=r"class 'odd' has 0 training row\(s\) \(2 in all\), fewer than data.min_class_rows 3"
    ):
        _snap(path, tmp_path, task=task)


def test_the_split_is_stratified_and_identical_texts_share_a_split(tmp_path: Path) -> None:
    rows = _rows(300)
    for r in rows[:12]:
        r["label"] = "odd"  # a rare class: 4 % of the rows
    rows.append({"id": "dup", "text": rows[20]["text"], "label": rows[20]["label"]})
    path = _csv(tmp_path, rows)
    task = TaskConfig(type="classification", labels=["neg", "pos", "odd"])
    snap = _snap(path, tmp_path, task=task, validation_fraction=0.15, test_fraction=0.2)
    for split in ("train", "validation", "test"):
        assert snap.split_labels[split].get("odd", 0) >= 1, f"the rare class is in {split}"
    frames = {s: pd.read_parquet(tmp_path / "out" / f"{s}.parquet") for s in ("train", "validation", "test")}
    where = {s for s, f in frames.items() if rows[20]["text"] in set(f["text"])}
    assert len(where) == 1, "a text and its duplicate land in one split"
    assert abs(len(frames["test"]) - 0.2 * 301) <= 3 and abs(len(frames["validation"]) - 0.15 * 301) <= 3
