"""Multi-label heads (several labels per text): label sets from data, per-label probabilities,
thresholds tuned on validation, label-set metrics. NumPy only, like trainflow/tasks/heads.py, so
training, the gates and the package loader share it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.5
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Per-label probabilities from [B, L] logits (numerically stable for large magnitudes)."""
    x = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


@dataclass(frozen=True)
class LabelSets:
    """Multi-hot targets [rows, labels] and the problems found reading them (row numbers 1-based,
    as a spreadsheet shows them; every problem, not the first)."""

    targets: np.ndarray
    problems: list[str]


def parse_label_sets(values: Sequence[object], labels: Sequence[str], separator: str = ";") -> LabelSets:
    """Read each row's labels: a string of labels joined by `separator` (CSV/TSV; empty: no label)
    or a list (JSONL/Parquet); surrounding spaces are ignored, a label given twice counts once.
    Labels not in `labels` are problems naming the rows."""
    index = {name: i for i, name in enumerate(labels)}
    targets = np.zeros((len(values), len(labels)), dtype=np.float32)
    unknown: dict[str, list[int]] = {}
    for row, value in enumerate(values):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            names: list[str] = []
        elif isinstance(value, str):
            names = [v.strip() for v in value.split(separator) if v.strip()]
        elif isinstance(value, list | tuple | np.ndarray):
            names = [str(v).strip() for v in value]
        else:  # a lone number or boolean where a label set belongs: a label of that name (unknown, reported)
            names = [str(value).strip()]
        for name in names:
            if name in index:
                targets[row, index[name]] = 1.0
            else:
                unknown.setdefault(name, []).append(row + 1)
    problems = [
        f"unknown label {name!r} in {len(rows)} row(s): rows {_rows(rows)}; task.labels is {list(labels)}"
        for name, rows in sorted(unknown.items())
    ]
    return LabelSets(targets, problems)


def _rows(rows: list[int], shown: int = 10) -> str:
    head = ", ".join(str(r) for r in rows[:shown])
    return head + (f" and {len(rows) - shown} more" if len(rows) > shown else "")


def rare_labels(targets: np.ndarray, labels: Sequence[str], min_rows: int) -> list[str]:
    """One problem per label with fewer than `min_rows` rows (all at once)."""
    counts = targets.sum(axis=0).astype(int)
    return [f"label {name!r} has {c} row(s), fewer than {min_rows}; add rows or drop it from task.labels"
            for name, c in zip(labels, counts, strict=True) if c < min_rows]  # fmt: skip


def _f1(tp: float, fp: float, fn: float) -> float:
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def multilabel_metrics(targets: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """`micro_f1` (over every row-label pair), `macro_f1` (the mean of per-label F1; a label never
    true and never predicted scores 0, as scikit-learn's default does) and `subset_accuracy` (rows
    whose whole label set is right)."""
    y, p = np.asarray(targets) > 0.5, np.asarray(predicted) > 0.5
    tp, fp, fn = (y & p).sum(axis=0), (~y & p).sum(axis=0), (y & ~p).sum(axis=0)
    return {
        "micro_f1": _f1(float(tp.sum()), float(fp.sum()), float(fn.sum())),
        "macro_f1": float(np.mean([_f1(a, b, c) for a, b, c in zip(tp, fp, fn, strict=True)])),
        "subset_accuracy": float((y == p).all(axis=1).mean()),
    }


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Per label, the threshold of `grid` with the best F1 on these (validation) rows; ties go to the
    threshold nearest 0.5, and a label with no positive row keeps 0.5."""
    probs, y = np.asarray(probs), np.asarray(targets) > 0.5
    out = np.full(probs.shape[1], DEFAULT_THRESHOLD)
    for k in range(probs.shape[1]):
        if not y[:, k].any():
            continue
        scores = []
        for t in grid:
            p = probs[:, k] >= t
            scores.append((_f1(float((p & y[:, k]).sum()), float((p & ~y[:, k]).sum()), float((~p & y[:, k]).sum())),
                           -abs(float(t) - DEFAULT_THRESHOLD)))  # fmt: skip
        out[k] = float(grid[max(range(len(grid)), key=lambda i: scores[i])])
    return out


def predict_sets(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[B, L] booleans: each label whose probability reaches its threshold."""
    return np.asarray(probs) >= np.asarray(thresholds)[None, :]
