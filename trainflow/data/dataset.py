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
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from trainflow.core.config import DataConfig, TaskConfig
from trainflow.core.errors import DatasetError
from trainflow.core.io import atomic_write, atomic_write_text, sha256_file
from trainflow.core.layout import SNAPSHOT

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


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


SHOWN_ROWS = 20  # rows listed per kind of problem; the rest are counted


BAD_BYTE = "\ufffd"  # what an undecodable byte becomes, so the rows holding one can be named


def _decode(raw: bytes, encoding: str) -> tuple[str, bool]:
    """(text, clean): `raw` decoded with `encoding` (a UTF-8 byte order mark is dropped); bytes
    that do not decode become U+FFFD and `clean` is False."""
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return raw.decode(codec), True
    except UnicodeDecodeError:
        return raw.decode(codec, errors="replace"), False


def _read_table(path: Path, raw: bytes, encoding: str = "utf-8") -> tuple[pd.DataFrame, bool]:
    """Parse the file's bytes `raw` (the same bytes that were hashed); (table, decoded cleanly)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DatasetError(path, f"cannot gunzip: {err}") from None
        name = name[:-3]
    if name.endswith(".parquet"):
        try:
            return pd.read_parquet(io.BytesIO(raw)), True
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise DatasetError(path, f"cannot read Parquet: {err}") from None
    try:
        text, clean = _decode(raw, encoding)
    except LookupError:
        raise DatasetError(path, f"data.encoding {encoding!r} is not a known text encoding") from None
    try:
        if name.endswith((".csv", ".tsv")):
            sep = "\t" if name.endswith(".tsv") else ","
            return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False), clean
        if name.endswith((".jsonl", ".ndjson")):
            return pd.read_json(io.StringIO(text), lines=True, dtype=False), clean
    except (ValueError, pd.errors.ParserError) as err:
        raise DatasetError(path, f"cannot parse: {err}") from None
    raise DatasetError(path, "unsupported file type; use .csv, .tsv, .jsonl or .parquet (optionally .gz)")


def _has_bad_bytes(value: object) -> bool:
    return isinstance(value, str) and BAD_BYTE in value


class _Problems:
    """Problems found in one pass, by kind, with the data row numbers (1 = first row after the header)."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[tuple[int, str]]] = {}

    def add(self, kind: str, row: int, detail: str = "") -> None:
        self.by_kind.setdefault(kind, []).append((row, detail))

    def lines(self) -> list[str]:
        out = []
        for kind, found in self.by_kind.items():
            shown = ", ".join(f"{r}" + (f" ({d})" if d else "") for r, d in found[:SHOWN_ROWS])
            more = f" and {len(found) - SHOWN_ROWS} more" if len(found) > SHOWN_ROWS else ""
            out.append(f"{kind} in {len(found)} row(s): rows {shown}{more}")
        return out


def _label_indexer(values: list[object], task: TaskConfig) -> tuple[dict[str, int], str | None]:
    """{stripped label value: class index} and how labels were read (None: by name). Names are
    matched after stripping surrounding whitespace; when no value matches a name but the values are
    integers 0..K-1, they are taken as indices into task.labels."""
    by_name = {name: i for i, name in enumerate(task.labels)}
    keys = {_label_key(v) for v in values}
    if keys & set(by_name):
        return by_name, None
    as_int = {k: int(k) for k in keys if re.fullmatch(r"[0-9]+", k) and int(k) < len(task.labels)}
    if as_int:
        return as_int, f"labels are integers 0..{len(task.labels) - 1}: read as indices into task.labels {task.labels}"
    return by_name, None


def _label_key(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _id_column(df: pd.DataFrame, data: DataConfig, path: Path) -> str | None:
    if data.id_column is not None:
        if data.id_column not in df.columns:
            raise DatasetError(path, f"missing id column {data.id_column!r} (data.id_column); the file has"
                               f" {list(df.columns)}. Leave data.id_column unset to number the rows instead")  # fmt: skip
        return data.id_column
    return "id" if "id" in df.columns else None


def _validate(path: Path, df: pd.DataFrame, data: DataConfig, task: TaskConfig, clean: bool = True) -> pd.DataFrame:
    """Return a frame with columns id, text, label (int), split (or None). Every problem of the
    file is found in one pass and reported in one DatasetError (per kind: the first rows and the
    count of the rest, then the label histogram).

    Raises:
        DatasetError: a missing column, or rows with problems, or a single label.
    """
    missing = [c for c in (data.text_column, data.label_column) if c not in df.columns]
    if missing:
        raise DatasetError(path, f"missing column(s) {missing}; the file has {list(df.columns)}. Name yours with"
                           " data.text_column / data.label_column")  # fmt: skip
    id_col = _id_column(df, data, path)
    if data.max_rows is not None:
        df = df.iloc[: data.max_rows]
    records = df.to_dict("records")
    index, how = _label_indexer([r[data.label_column] for r in records], task)
    if how:
        log.info("%s: %s", path, how)
    problems, rows = _Problems(), []
    for i, rec in enumerate(records, start=1):
        text, label, split = rec[data.text_column], rec[data.label_column], rec.get("split")
        if not clean and any(_has_bad_bytes(v) for v in rec.values()):
            problems.add(f"bytes that are not {data.encoding} (re-save the file as UTF-8, or set data.encoding)", i)
            continue
        if not isinstance(text, str) or not text.strip():
            problems.add(f"empty text in column {data.text_column!r}", i)
        key = _label_key(label)
        if key not in index:
            problems.add(f"a label that is not one of {task.labels}", i, repr(key))
        if split is not None and split not in SPLITS:
            problems.add(f"a split that is not one of {list(SPLITS)}", i, repr(split))
        rid = str(rec[id_col]).strip() if id_col else f"row-{i}"
        rows.append((rid, str(text).strip(), index.get(key, -1), split, i))
    out = pd.DataFrame(rows, columns=["id", "text", "label", "split", "row"])
    for rid, group in out[out.duplicated("id", keep=False)].groupby("id", sort=False):
        splits = sorted({str(s) for s in group["split"]})
        across = f" across splits {splits}" if len(splits) > 1 else ""
        for row in group["row"].tolist()[1:]:
            problems.add(f"a duplicate id{across}", int(row), f"{rid!r}, first at row {group['row'].iloc[0]}")
    if problems.by_kind:
        histogram = Counter(_label_key(r[data.label_column]) for r in records).most_common(10)
        first_row = min(row for found in problems.by_kind.values() for row, _ in found)
        raise DatasetError(
            path,
            f"{sum(len(v) for v in problems.by_kind.values())} problem(s) in {len(records)} rows; nothing was"
            " trained:\n"
            + "\n".join(f"  - {line}" for line in problems.lines())
            + "\n  label histogram: "
            + ", ".join(f"{k!r} {n}" for k, n in histogram),
            row=first_row,  # the first problem's row
        )
    if out["label"].nunique() < 2:
        raise DatasetError(path, f"every row has the same label {task.labels[int(out['label'].iloc[0])]!r}")
    return out


def _assign_splits(df: pd.DataFrame, data: DataConfig, seed: int) -> pd.DataFrame:
    """Deterministic, stratified split: within each class, rows ordered by a salted hash of their
    text go to test, validation and train in the configured fractions (at least one row each where
    the class has three or more), so every class is in every split; identical texts share a split
    (the one of their first row), so no text is both trained on and tested."""
    if df["split"].notna().all():
        return df
    u = [int(hashlib.sha256(f"{seed}:{t}".encode()).hexdigest()[:12], 16) / 16**12 for t in df["text"]]
    df = df.assign(_u=u).sort_values(["_u", "id"])
    split = pd.Series("train", index=df.index, dtype=object)
    for _, rows in df.groupby("label", sort=True):
        n = len(rows)
        n_test = max(1, round(n * data.test_fraction)) if n >= 3 else 0
        n_val = max(1, round(n * data.validation_fraction)) if n >= 3 else 0
        if n_test + n_val >= n:  # keep at least one training row
            n_val = max(0, n - n_test - 1)
        split[rows.index[:n_test]] = "test"
        split[rows.index[n_test : n_test + n_val]] = "validation"
    df = df.assign(split=split)
    first = df.groupby("text", sort=False)["split"].transform("first")
    return df.assign(split=first).drop(columns="_u")


def _size_problems(df: pd.DataFrame, counts: dict[str, int], data: DataConfig, task: TaskConfig) -> list[str]:
    """Splits too small to judge a model, and classes too rare to learn, each naming its option."""
    problems = [
        f"the {name} split has {counts[name]} rows, fewer than data.min_split_rows {data.min_split_rows}: add data,"
        f" raise data.{name}_fraction, or lower data.min_split_rows (a figure from so few rows says little)"
        for name in ("validation", "test")
        if counts[name] < data.min_split_rows
    ]
    if counts["train"] < 1:
        problems.append("the train split is empty: lower data.validation_fraction and data.test_fraction")
    train = df[df["split"] == "train"]["label"].value_counts()
    for k, name in enumerate(task.labels):
        have, total = int(train.get(k, 0)), int((df["label"] == k).sum())
        if total and have < data.min_class_rows:
            problems.append(
                f"class {name!r} has {have} training row(s) ({total} in all), fewer than data.min_class_rows"
                f" {data.min_class_rows}: add rows of it, or lower data.min_class_rows"
            )
    return problems


@dataclass(frozen=True)
class Inspection:
    """A dataset read and validated, split in memory, nothing written (the pre-flight check)."""

    path: Path
    sha256: str
    frame: pd.DataFrame  # columns id, text, label, split, row
    counts: dict[str, int]

    @property
    def version(self) -> str:
        return f"{self.path.name.split('.')[0]}-{self.sha256[:12]}"


def inspect_dataset(*, data: DataConfig, task: TaskConfig, seed: int) -> Inspection:
    """Read, validate and split the dataset in memory: everything `snapshot_dataset` checks,
    without writing anything (`trainflow check` runs it).

    Raises:
        DatasetError: unreadable file, missing column, rows with problems (all listed at once),
            a single label, or too few rows for the splits.
    """
    path = Path(data.path)
    if not path.is_file():
        raise DatasetError(path, "file does not exist")
    raw = path.read_bytes()  # hashed and parsed from the same bytes: a file changed meanwhile cannot slip in
    table, clean = _read_table(path, raw, data.encoding)
    df = _assign_splits(_validate(path, table, data, task, clean), data, seed)
    counts = {s: int((df["split"] == s).sum()) for s in SPLITS}
    problems = _size_problems(df, counts, data, task)
    if problems:
        raise DatasetError(path, f"too little data to judge a model ({len(df)} rows, splits {counts}); nothing was"
                           " trained:\n" + "\n".join(f"  - {p}" for p in problems))  # fmt: skip
    return Inspection(path, hashlib.sha256(raw).hexdigest(), df, counts)


def snapshot_dataset(*, data: DataConfig, task: TaskConfig, seed: int, out_dir: Path) -> Snapshot:
    """Read, validate and split the dataset (`inspect_dataset`); write Parquet splits and
    snapshot.json to out_dir.

    Raises:
        DatasetError: as `inspect_dataset`; nothing is written then.
    """
    found = inspect_dataset(data=data, task=task, seed=seed)
    df, counts = found.frame, found.counts
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
        version=found.version,
        sha256=found.sha256,
        source=str(found.path),
        rows=len(df),
        labels={names[k]: int(v) for k, v in sorted(Counter(df["label"]).items())},
        splits={**counts, "calibration": len(frames["calibration"])},
        split_labels={s: {names[k]: int(v) for k, v in sorted(Counter(f["label"]).items())} for s, f in frames.items()},
        directory=str(out_dir),
        files=files,
        split_sha256=split_sha256,
    )
    atomic_write_text(out_dir / SNAPSHOT, snap.to_json())
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
