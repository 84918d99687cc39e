"""Dataset snapshot: read, validate, checksum and split a text+label file.

Input: CSV/TSV (optionally .gz), JSONL (optionally .gz) or Parquet with a text and a label column,
optionally a second text column (`data.text_pair_column`), an id column and a `split` column
(train/validation/test) for pre-split data. Labels by task: a class name (classification, ordinal),
a row's label set (multilabel: names joined by `data.label_separator`, or a list), a number
(regression).
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
from typing import Any

import numpy as np
import pandas as pd

from trainflow.core.config import DataConfig, TaskConfig
from trainflow.core.errors import DatasetError
from trainflow.core.io import atomic_write, atomic_write_text, sha256_file
from trainflow.core.layout import SNAPSHOT

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitData:
    """One split in memory: parallel lists of ids, texts and targets (class indices; multilabel:
    0/1 rows over task.labels; regression: numbers), and the second texts of a pair task."""

    ids: list[str]
    texts: list[str]
    labels: list[Any]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def inputs(self) -> list[str] | list[tuple[str, str]]:
        """What the model reads: the texts, or (text, pair text) tuples of a pair task."""
        return self.texts if self.pairs is None else list(zip(self.texts, self.pairs, strict=True))

    def head(self, n: int) -> SplitData:
        """The first `n` rows."""
        return SplitData(self.ids[:n], self.texts[:n], self.labels[:n], None if self.pairs is None else self.pairs[:n])

    def __add__(self, other: SplitData) -> SplitData:
        pairs = None if self.pairs is None or other.pairs is None else self.pairs + other.pairs
        return SplitData(self.ids + other.ids, self.texts + other.texts, self.labels + other.labels, pairs)


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


def read_table(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """A CSV/TSV/JSONL/Parquet file (optionally .gz) as a table, text columns as strings (what
    `trainflow predict --input` reads).

    Raises:
        DatasetError: the file is missing, of another type, or cannot be parsed or decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file does not exist")
    table, clean = _read_table(path, path.read_bytes(), encoding)
    if not clean:
        raise DatasetError(path, f"holds bytes that are not {encoding}; re-save it as UTF-8")
    return table


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


def _targets(records: list[dict], data: DataConfig, task: TaskConfig, problems: _Problems, path: Path) -> list[Any]:
    """Each row's target read for the task (None where it has a problem, which is added to
    `problems` under the row number, reported in row order by `_validate`)."""
    values = [r[data.label_column] for r in records]
    if task.type == "multilabel":
        from trainflow.tasks.multilabel import parse_label_sets

        out: list[Any] = []
        for i, value in enumerate(values, start=1):
            if isinstance(value, np.ndarray):
                value = value.tolist()
            found = parse_label_sets([value], task.labels, data.label_separator)
            if found.problems:
                names = [v for v in _split_labels(value, data.label_separator) if v not in task.labels]
                problems.add(f"a label that is not one of {task.labels}", i, ", ".join(repr(n) for n in names))
                out.append(None)
            else:
                out.append([float(v) for v in found.targets[0]])
        return out
    if task.type == "regression":
        from trainflow.tasks.regression import parse_scores

        scores = parse_scores(values).values
        out = []
        for i, (value, score) in enumerate(zip(values, scores, strict=True), start=1):
            if np.isnan(score):
                problems.add("a missing or non-numeric value in the label column", i, repr(value))
                out.append(None)
            else:
                out.append(float(score))
        return out
    index, how = _label_indexer(values, task)
    if how:
        log.info("%s: %s", path, how)
    out = []
    for i, value in enumerate(values, start=1):
        key = _label_key(value)
        if key not in index:
            problems.add(f"a label that is not one of {task.labels}", i, repr(key))
        out.append(index.get(key))
    return out


def _split_labels(value: object, separator: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(separator) if v.strip()]
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value]
    return [] if value is None else [str(value).strip()]


def _histogram(task: TaskConfig, targets: list[Any]) -> list[tuple[str, int]]:
    """Rows per label (multilabel: per label, and rows with none; regression: per value range)."""
    if task.type == "multilabel":
        rows = np.asarray([t for t in targets if t is not None], dtype=np.float32).reshape(-1, len(task.labels))
        counts = [(name, int(c)) for name, c in zip(task.labels, rows.sum(axis=0), strict=True)]
        return sorted(counts, key=lambda kv: -kv[1]) + [("(no label)", int((rows.sum(axis=1) == 0).sum()))]
    if task.type == "regression":
        values = np.asarray([t for t in targets if t is not None], dtype=np.float64)
        if not len(values):
            return []
        edges = np.linspace(values.min(), values.max(), 6)
        per_bin = np.histogram(values, bins=edges)[0]
        return [(f"{a:.4g}..{b:.4g}", int(c)) for a, b, c in zip(edges[:-1], edges[1:], per_bin, strict=True)]
    names = task.labels
    return [(names[k], n) for k, n in Counter(t for t in targets if t is not None).most_common()]


def label_histogram(task: TaskConfig, targets: list[Any]) -> dict[str, int]:
    """Rows per label name (multilabel: rows carrying each label and rows with none; regression:
    rows per fifth of the value range), what snapshots record and `trainflow check` shows."""
    return dict(_histogram(task, targets))


def _validate(path: Path, df: pd.DataFrame, data: DataConfig, task: TaskConfig, clean: bool = True) -> pd.DataFrame:
    """Return a frame with columns id, text, text_pair (or None), label (the task's target), split
    (or None). Every problem of the file is found in one pass and reported in one DatasetError (per
    kind: the first rows and the count of the rest, then the label histogram).

    Raises:
        DatasetError: a missing column, or rows with problems, or a single label.
    """
    wanted = [data.text_column, data.label_column] + ([data.text_pair_column] if data.text_pair_column else [])
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DatasetError(path, f"missing column(s) {missing}; the file has {list(df.columns)}. Name yours with"
                           " data.text_column / data.label_column / data.text_pair_column")  # fmt: skip
    id_col = _id_column(df, data, path)
    if data.max_rows is not None:
        df = df.iloc[: data.max_rows]
    records = df.to_dict("records")
    problems, rows, label_problems = _Problems(), [], _Problems()
    targets = _targets(records, data, task, label_problems, path)
    by_row = {row: (kind, detail) for kind, found in label_problems.by_kind.items() for row, detail in found}
    for i, (rec, target) in enumerate(zip(records, targets, strict=True), start=1):
        text, split = rec[data.text_column], rec.get("split")
        pair = rec[data.text_pair_column] if data.text_pair_column else None
        if not clean and any(_has_bad_bytes(v) for v in rec.values()):
            problems.add(f"bytes that are not {data.encoding} (re-save the file as UTF-8, or set data.encoding)", i)
            continue
        if not isinstance(text, str) or not text.strip():
            problems.add(f"empty text in column {data.text_column!r}", i)
        if data.text_pair_column and (not isinstance(pair, str) or not pair.strip()):
            problems.add(f"empty text in the pair column {data.text_pair_column!r}", i)
        if i in by_row:
            problems.add(by_row[i][0], i, by_row[i][1])
        if split is not None and split not in SPLITS:
            problems.add(f"a split that is not one of {list(SPLITS)}", i, repr(split))
        rid = str(rec[id_col]).strip() if id_col else f"row-{i}"
        rows.append((rid, str(text).strip(), str(pair).strip() if data.text_pair_column else None, target, split, i))
    out = pd.DataFrame(rows, columns=["id", "text", "text_pair", "label", "split", "row"])
    for rid, group in out[out.duplicated("id", keep=False)].groupby("id", sort=False):
        splits = sorted({str(s) for s in group["split"]})
        across = f" across splits {splits}" if len(splits) > 1 else ""
        for row in group["row"].tolist()[1:]:
            problems.add(f"a duplicate id{across}", int(row), f"{rid!r}, first at row {group['row'].iloc[0]}")
    if problems.by_kind:
        if task.type in ("classification", "ordinal"):  # the values as written, unknown ones too
            histogram = Counter(_label_key(r[data.label_column]) for r in records).most_common(10)
        else:
            histogram = _histogram(task, targets)[:10]
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
    _refuse_constant(path, out, task)
    return out.assign(stratum=_strata(out["label"].tolist(), task))


def _refuse_constant(path: Path, out: pd.DataFrame, task: TaskConfig) -> None:
    """A target that never varies teaches nothing."""
    labels = out["label"].tolist()
    if task.type == "regression":
        if len(set(labels)) < 2:
            raise DatasetError(path, f"every row has the same value {labels[0]!r}: there is nothing to learn")
    elif task.type == "multilabel":
        if not any(any(t) for t in labels):
            raise DatasetError(path, f"no row carries any of the labels {task.labels}")
    elif out["label"].nunique() < 2:
        raise DatasetError(path, f"every row has the same label {task.labels[int(labels[0])]!r}")


def _strata(targets: list[Any], task: TaskConfig) -> list[int]:
    """What the split keeps proportional: the class; multilabel: the row's rarest label (-1: none);
    regression: the fifth of the value distribution the row falls in."""
    if task.type == "multilabel":
        rows = np.asarray(targets, dtype=np.float32).reshape(-1, len(task.labels))
        freq = rows.sum(axis=0)
        rarity = np.where(rows > 0, freq[None, :], np.inf)
        return [int(np.argmin(r)) if np.isfinite(r).any() else -1 for r in rarity]
    if task.type == "regression":
        values = np.asarray(targets, dtype=np.float64)
        edges = np.quantile(values, [0.2, 0.4, 0.6, 0.8])
        return np.searchsorted(edges, values, side="right").astype(int).tolist()
    return [int(t) for t in targets]


def _assign_splits(df: pd.DataFrame, data: DataConfig, seed: int) -> pd.DataFrame:
    """Deterministic, stratified split: within each stratum (the class; multilabel: the row's rarest
    label; regression: the fifth of the values), rows ordered by a salted hash of their text (a
    pair: both texts) go to test, validation and train in the configured fractions (at least one row
    each where the stratum has three or more), so every class is in every split; identical texts
    (pairs) share a split (the one of their first row), so no text is both trained on and tested."""
    if df["split"].notna().all():
        return df
    # A pair is one input: (text, pair text) hashed and matched together.
    keys = df["text"] if df["text_pair"].isna().all() else df["text"] + "\x1f" + df["text_pair"].fillna("")
    u = [int(hashlib.sha256(f"{seed}:{t}".encode()).hexdigest()[:12], 16) / 16**12 for t in keys]
    df = df.assign(_u=u, _key=keys).sort_values(["_u", "id"])
    split = pd.Series("train", index=df.index, dtype=object)
    for _, rows in df.groupby("stratum", sort=True):
        n = len(rows)
        n_test = max(1, round(n * data.test_fraction)) if n >= 3 else 0
        n_val = max(1, round(n * data.validation_fraction)) if n >= 3 else 0
        if n_test + n_val >= n:  # keep at least one training row
            n_val = max(0, n - n_test - 1)
        split[rows.index[:n_test]] = "test"
        split[rows.index[n_test : n_test + n_val]] = "validation"
    df = df.assign(split=split)
    first = df.groupby("_key", sort=False)["split"].transform("first")
    return df.assign(split=first).drop(columns=["_u", "_key"])


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
    if task.type == "regression":
        return problems
    if task.type == "multilabel":
        every = np.asarray(df["label"].tolist(), dtype=np.float32).reshape(-1, len(task.labels))
        train_rows = every[(df["split"] == "train").to_numpy()]
        have_counts, totals = train_rows.sum(axis=0).astype(int), every.sum(axis=0).astype(int)
    else:
        train = df[df["split"] == "train"]["label"].value_counts()
        have_counts = [int(train.get(k, 0)) for k in range(len(task.labels))]
        totals = [int((df["label"] == k).sum()) for k in range(len(task.labels))]
    kind = "label" if task.type == "multilabel" else "class"
    for name, have, total in zip(task.labels, have_counts, totals, strict=True):
        if (total or task.type == "multilabel") and have < data.min_class_rows:
            problems.append(
                f"{kind} {name!r} has {have} training row(s) ({total} in all), fewer than data.min_class_rows"
                f" {data.min_class_rows}: add rows of it, or lower data.min_class_rows"
                + (" (or drop it from task.labels)" if task.type == "multilabel" else "")
            )
    return problems


@dataclass(frozen=True)
class Inspection:
    """A dataset read and validated, split in memory, nothing written (the pre-flight check)."""

    path: Path
    sha256: str
    frame: pd.DataFrame  # columns id, text, text_pair, label, split, row, stratum
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
    columns = ["id", "text", "label"] + (["text_pair"] if data.text_pair_column else [])
    for name, frame in frames.items():
        target = out_dir / f"{name}.parquet"
        with atomic_write(target) as tmp:
            frame[columns].to_parquet(tmp, index=False)
            split_sha256[name] = sha256_file(tmp)
        files[name] = target.name

    def histogram(frame: pd.DataFrame) -> dict[str, int]:
        if task.type in ("classification", "ordinal"):  # in class order, as before
            return {task.labels[k]: int(v) for k, v in sorted(Counter(frame["label"]).items())}
        return label_histogram(task, frame["label"].tolist())

    snap = Snapshot(
        version=found.version,
        sha256=found.sha256,
        source=str(found.path),
        rows=len(df),
        labels=histogram(df),
        splits={**counts, "calibration": len(frames["calibration"])},
        split_labels={s: histogram(f) for s, f in frames.items()},
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
        ids=frame["id"].astype(str).tolist(),
        texts=frame["text"].tolist(),
        labels=_read_targets(frame["label"]),
        pairs=frame["text_pair"].tolist() if "text_pair" in frame.columns else None,
    )


def _read_targets(column: pd.Series) -> list[Any]:
    """Class indices (ints), regression values (floats) or multilabel rows (lists of 0/1 floats),
    as the snapshot wrote them."""
    if pd.api.types.is_float_dtype(column):
        return [float(v) for v in column]
    if pd.api.types.is_integer_dtype(column):
        return [int(v) for v in column]
    return [[float(x) for x in v] for v in column]
