"""Dataset snapshot: read, validate, checksum and split a text+label file.

Input: CSV/TSV (optionally .gz), JSONL (optionally .gz) or Parquet with a text and a label column,
optionally an id column and a `split` column (train/validation/test) for pre-split data.
Output: one Parquet file per split plus `snapshot.json` under `out_dir`. The dataset version is
derived from the file's SHA-256, so the same bytes always give the same version and split.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from trainflow.config import DataConfig, TaskConfig
from trainflow.errors import DatasetError
from trainflow.io import atomic_write, atomic_write_text, sha256_file

SPLITS = ("train", "validation", "test")
MIN_ROWS_PER_SPLIT = 2


@dataclass(frozen=True)
class SplitData:
    """One split in memory: parallel lists of ids, texts and label indices."""

    ids: list[str]
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class DatasetSummary:
    """What a package records about its data (metadata.json `dataset`)."""

    version: str
    sha256: str
    source: str
    rows: int
    splits: dict[str, int]  # rows per split, calibration included
    labels: dict[str, int]  # rows per label name


@dataclass(frozen=True)
class Snapshot(DatasetSummary):
    """A validated, split dataset on disk: its summary plus where the split files are."""

    split_labels: dict[str, dict[str, int]]
    directory: str
    files: dict[str, str] = field(default_factory=dict)
    split_sha256: dict[str, str] = field(default_factory=dict)  # checked on every load_split

    def summary(self) -> DatasetSummary:
        return DatasetSummary(self.version, self.sha256, self.source, self.rows, self.splits, self.labels)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DatasetError(
            path, f"bytes {raw[err.start : err.end]!r} at line {line} are not valid UTF-8; re-save the file as UTF-8"
        ) from None


def _read_table(path: Path, raw: bytes) -> pd.DataFrame:
    """Parse the file's bytes `raw` (the same bytes that were hashed)."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        try:
            return pd.read_parquet(io.BytesIO(raw))
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise DatasetError(path, f"cannot read Parquet: {err}") from None
    if name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DatasetError(path, f"cannot gunzip: {err}") from None
        name = name[:-3]
    text = _decode(path, raw)
    try:
        if name.endswith((".csv", ".tsv")):
            sep = "\t" if name.endswith(".tsv") else ","
            return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
        if name.endswith((".jsonl", ".ndjson")):
            return pd.read_json(io.StringIO(text), lines=True, dtype=False)
    except (ValueError, pd.errors.ParserError) as err:
        raise DatasetError(path, f"cannot parse: {err}") from None
    raise DatasetError(path, "unsupported file type; use .csv, .tsv, .jsonl or .parquet (optionally .gz)")


def _validate(path: Path, df: pd.DataFrame, data: DataConfig, task: TaskConfig) -> pd.DataFrame:
    """Return a frame with columns id, text, label (int), split (or None). Raises DatasetError."""
    needed = [data.text_column, data.label_column] + ([data.id_column] if data.id_column else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DatasetError(path, f"missing column(s) {missing}; the file has {list(df.columns)}")
    if data.max_rows is not None:
        df = df.iloc[: data.max_rows]
    label_index = {name: i for i, name in enumerate(task.labels)}
    rows = []
    for i, rec in enumerate(df.to_dict("records"), start=1):
        text = rec[data.text_column]
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(path, f"empty text in column {data.text_column!r}", row=i)
        label = rec[data.label_column]
        if isinstance(label, float) and task.type == "classification":
            raise DatasetError(path, f"label {label!r} is a float; classification needs one of {task.labels}", row=i)
        key = str(label)
        if key not in label_index:
            raise DatasetError(path, f"label {key!r} is not one of the declared classes {task.labels}", row=i)
        rid = str(rec[data.id_column]) if data.id_column else f"row-{i}"
        split = rec.get("split")
        if split is not None and split not in SPLITS:
            raise DatasetError(path, f"split {split!r} is not one of {list(SPLITS)}", row=i)
        rows.append((rid, text.strip(), label_index[key], split, i))
    out = pd.DataFrame(rows, columns=["id", "text", "label", "split", "row"])
    dup = out[out.duplicated("id", keep=False)]
    if not dup.empty:
        first = dup.iloc[0]["id"]
        where = dup[dup["id"] == first]
        splits = sorted({str(s) for s in where["split"]})
        across = f" across splits {splits}" if len(splits) > 1 else ""
        raise DatasetError(
            path, f"duplicate id {first!r}{across} at rows {where['row'].tolist()}", row=int(where.iloc[1]["row"])
        )
    if out["label"].nunique() < 2:
        raise DatasetError(path, f"every row has the same label {task.labels[int(out['label'].iloc[0])]!r}")
    return out


def _assign_splits(df: pd.DataFrame, data: DataConfig, seed: int) -> pd.DataFrame:
    """Deterministic split by a salted hash of the text: identical texts share a split."""
    if df["split"].notna().all():
        return df
    u = [int(hashlib.sha256(f"{seed}:{t}".encode()).hexdigest()[:12], 16) / 16**12 for t in df["text"]]
    test, val = data.test_fraction, data.test_fraction + data.validation_fraction
    df = df.assign(split=["test" if x < test else "validation" if x < val else "train" for x in u], _u=u)
    return df.sort_values(["_u", "id"]).drop(columns="_u")


def snapshot_dataset(*, data: DataConfig, task: TaskConfig, seed: int, out_dir: Path) -> Snapshot:
    """Read, validate and split the dataset; write Parquet splits and snapshot.json to out_dir.

    Raises:
        DatasetError: unreadable file, bad encoding, missing column, empty text, unknown label,
            duplicate id, a single label, or too few rows for the splits.
    """
    path = Path(data.path)
    if not path.is_file():
        raise DatasetError(path, "file does not exist")
    raw = path.read_bytes()  # hashed and parsed from the same bytes: a file changed meanwhile cannot slip in
    digest = hashlib.sha256(raw).hexdigest()
    df = _assign_splits(_validate(path, _read_table(path, raw), data, task), data, seed)
    counts = {s: int((df["split"] == s).sum()) for s in SPLITS}
    short = {s: n for s, n in counts.items() if n < MIN_ROWS_PER_SPLIT}
    if short:
        raise DatasetError(
            path, f"{len(df)} rows give splits {counts}; each split needs >= {MIN_ROWS_PER_SPLIT} rows; add data"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    split_sha256: dict[str, str] = {}
    frames = {s: df[df["split"] == s] for s in SPLITS}
    frames["calibration"] = frames["train"].head(data.calibration_size)
    for name, frame in frames.items():
        target = out_dir / f"{name}.parquet"
        with atomic_write(target) as tmp:
            frame[["id", "text", "label"]].to_parquet(tmp, index=False)
            split_sha256[name] = sha256_file(tmp)
        files[name] = target.name
    names = task.labels
    snap = Snapshot(
        version=f"{path.name.split('.')[0]}-{digest[:12]}",
        sha256=digest,
        source=str(path),
        rows=len(df),
        labels={names[k]: int(v) for k, v in sorted(Counter(df["label"]).items())},
        splits={**counts, "calibration": len(frames["calibration"])},
        split_labels={s: {names[k]: int(v) for k, v in sorted(Counter(f["label"]).items())} for s, f in frames.items()},
        directory=str(out_dir),
        files=files,
        split_sha256=split_sha256,
    )
    atomic_write_text(out_dir / "snapshot.json", snap.to_json())
    return snap


def load_split(snapshot: Snapshot, name: str) -> SplitData:
    """One split of the snapshot, from bytes that match the SHA-256 recorded when it was written.

    Raises:
        DatasetError: the split file changed (or vanished) since the snapshot was taken.
    """
    path = Path(snapshot.directory) / snapshot.files[name]
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(path, f"split {name!r} of dataset {snapshot.version} cannot be read ({err})") from None
    expected = snapshot.split_sha256.get(name)
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        raise DatasetError(
            path,
            f"split {name!r} of dataset {snapshot.version} changed since the snapshot was taken (SHA-256"
            f" {hashlib.sha256(raw).hexdigest()[:12]}..., recorded {expected[:12]}...); nothing was trained on it."
            " Start a new run (python flows/train_flow.py run) to snapshot the data again",
        )
    frame = pd.read_parquet(io.BytesIO(raw))
    return SplitData(
        ids=frame["id"].astype(str).tolist(), texts=frame["text"].tolist(), labels=frame["label"].astype(int).tolist()
    )
