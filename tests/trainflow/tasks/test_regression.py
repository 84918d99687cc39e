"""Regression heads: scores read from data with every problem named, and the metrics against
SciPy's definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from trainflow.tasks.regression import mean_baseline, parse_scores, regression_metrics


def test_scores_are_read_and_every_bad_row_is_named() -> None:
    found = parse_scores(["7", 3.5, "", None, "ten", "nan", "inf", " 1e1 ", "ten"])
    assert found.values[[0, 1, 7]].tolist() == [7.0, 3.5, 10.0]
    assert found.problems == ["missing label in 3 row(s): rows 3, 4, 6", "non-numeric label 'inf' in 1 row(s): rows 7",
                              "non-numeric label 'ten' in 2 row(s): rows 5, 9"]  # fmt: skip


def test_metrics_match_scipy_with_ties() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(1, 11, 300).astype(float)  # 1-10 ratings: many ties
    p = y + rng.normal(0, 2, 300)
    p[:20] = 5.0  # ties in the predictions too
    m = regression_metrics(y, p)
    assert m["mse"] == pytest.approx(float(np.mean((p - y) ** 2)))
    assert m["mae"] == pytest.approx(float(np.mean(np.abs(p - y))))
    assert m["pearson"] == pytest.approx(stats.pearsonr(y, p).statistic, abs=1e-12)
    assert m["spearman"] == pytest.approx(stats.spearmanr(y, p).statistic, abs=1e-12)


def test_the_mean_baseline_predicts_the_training_mean() -> None:
    train, test = np.array([1.0, 2.0, 3.0, 10.0]), np.array([4.0, 0.0])
    base = mean_baseline(train, test)
    assert base["mae"] == pytest.approx(2.0) and base["mse"] == pytest.approx(8.0)  # mean 4: errors 0 and 4
    assert base["pearson"] == 0.0 and base["spearman"] == 0.0  # constant predictions: no correlation
