"""Regression heads (a number per text): scores read from data, metrics, the mean baseline. NumPy
only, like trainflow/tasks/heads.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    """Numeric targets and the problems found reading them (row numbers 1-based, every problem)."""

    values: np.ndarray
    problems: list[str]


def parse_scores(values: Sequence[object]) -> Scores:
    """Each row's label as a float; missing, non-numeric and non-finite values are problems
    naming their rows."""
    out = np.full(len(values), np.nan)
    missing: list[int] = []
    bad: dict[str, list[int]] = {}
    for row, value in enumerate(values):
        if value is None or (isinstance(value, str) and not value.strip()):
            missing.append(row + 1)
            continue
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            bad.setdefault(str(value), []).append(row + 1)
            continue
        if np.isnan(number):
            missing.append(row + 1)
        elif not np.isfinite(number):
            bad.setdefault(str(value), []).append(row + 1)
        else:
            out[row] = number
    problems = [f"missing label in {len(missing)} row(s): rows {_rows(missing)}"] if missing else []
    problems += [f"non-numeric label {v!r} in {len(r)} row(s): rows {_rows(r)}" for v, r in sorted(bad.items())]
    return Scores(out, problems)


def _rows(rows: list[int], shown: int = 10) -> str:
    head = ", ".join(str(r) for r in rows[:shown])
    return head + (f" and {len(rows) - shown} more" if len(rows) > shown else "")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman's correlation uses."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    sorted_x = x[order]
    start = 0
    for i in range(1, len(x) + 1):
        if i == len(x) or sorted_x[i] != sorted_x[start]:
            ranks[order[start:i]] = (start + i - 1) / 2.0
            start = i
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; 0.0 when either side is constant (no linear relation can be measured)."""
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return 0.0 if denom == 0 else float((a * b).sum() / denom)


def regression_metrics(targets: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """`mse`, `mae`, `pearson` and `spearman` (rank correlation, ties averaged); the correlations
    are 0.0 when the predictions or targets are constant."""
    y, p = np.asarray(targets, dtype=float).reshape(-1), np.asarray(predicted, dtype=float).reshape(-1)
    return {
        "mse": float(((p - y) ** 2).mean()),
        "mae": float(np.abs(p - y).mean()),
        "pearson": _pearson(y, p),
        "spearman": _pearson(_ranks(y), _ranks(p)),
    }


def mean_baseline(train_targets: np.ndarray, test_targets: np.ndarray) -> dict[str, float]:
    """The metrics of predicting the training mean for every test row (regression's majority baseline)."""
    test = np.asarray(test_targets, dtype=float)
    return regression_metrics(test, np.full(len(test), float(np.mean(train_targets))))
