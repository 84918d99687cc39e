"""Multi-label heads: label sets read from data with every problem named, thresholds tuned on
validation, and the label-set metrics against hand-counted and scikit-learn-style definitions."""

from __future__ import annotations

import numpy as np
import pytest

from trainflow.tasks.multilabel import (
    multilabel_metrics,
    parse_label_sets,
    predict_sets,
    rare_labels,
    sigmoid,
    tune_thresholds,
)

LABELS = ["plot", "acting", "music"]


def test_label_sets_come_from_separated_strings_or_lists_and_unknown_labels_are_named_with_rows() -> None:
    found = parse_label_sets(["plot; acting", "", None, ["music", "plot"], " music ;music", "dance;plot", "dance"],
                             LABELS)  # fmt: skip
    assert found.targets.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0]]
    assert found.problems == [
        "unknown label 'dance' in 2 row(s): rows 6, 7; task.labels is ['plot', 'acting', 'music']"
    ]
    assert parse_label_sets(["plot|music"], LABELS, separator="|").targets.tolist() == [[1, 0, 1]]
    many = parse_label_sets(["x"] * 12, LABELS)
    assert many.problems == ["unknown label 'x' in 12 row(s): rows 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 2 more;"
                             " task.labels is ['plot', 'acting', 'music']"]  # fmt: skip
    assert rare_labels(found.targets, LABELS, 2) == [
        "label 'acting' has 1 row(s), fewer than 2; add rows or drop it from task.labels"
    ]


def test_metrics_count_pairs_labels_and_whole_sets() -> None:
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    p = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]])
    m = multilabel_metrics(y, p)
    # pairs: tp 3 (r1 plot, r2 acting, r3 plot), fp 1 (r3 music), fn 2 (r1 music, r3 acting)
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    # per label: plot 1.0; acting tp1 fn1 -> 2/3; music tp0 -> 0
    assert m["macro_f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert m["subset_accuracy"] == pytest.approx(2 / 4)
    assert multilabel_metrics(y, y) == {"micro_f1": 1.0, "macro_f1": pytest.approx(1.0), "subset_accuracy": 1.0}


def test_thresholds_are_tuned_per_label_on_validation() -> None:
    rng = np.random.default_rng(0)
    y = rng.random((400, 3)) < np.array([0.5, 0.1, 0.0])  # label 3 never true
    # label 1 is well calibrated; label 2's probabilities are shifted low: its best threshold is lower.
    probs = np.clip(np.stack([0.5 * y[:, 0] + 0.25 + 0.2 * rng.random(400),
                              0.3 * y[:, 1] + 0.05 + 0.1 * rng.random(400),
                              rng.random(400)], axis=1), 0, 1)  # fmt: skip
    t = tune_thresholds(probs, y)
    assert 0.45 <= t[0] <= 0.75 and t[1] <= 0.35 and t[2] == 0.5
    tuned = multilabel_metrics(y, predict_sets(probs, t))
    fixed = multilabel_metrics(y, predict_sets(probs, np.full(3, 0.5)))
    assert tuned["macro_f1"] > fixed["macro_f1"] and tuned["micro_f1"] >= fixed["micro_f1"]


def test_sigmoid_is_stable_at_large_magnitudes() -> None:
    out = sigmoid(np.array([[-1000.0, 0.0, 1000.0]]))
    assert out.tolist() == [[0.0, 0.5, 1.0]] and np.isfinite(out).all()
