"""From model outputs to classes, probabilities and metrics: NumPy only (no torch), so the
package loader and a consumer use exactly what training and the gates use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainflow.core.layout import HEAD

HEAD_FILE = HEAD  # the head's task, labels and ordinal cutpoints beside a saved model


def read_head(folder: Path) -> dict:
    return json.loads((Path(folder) / HEAD_FILE).read_text())


def ordinal_probabilities(score: np.ndarray, cutpoints: np.ndarray) -> np.ndarray:
    """Class probabilities [B, K] from scores [B] and cutpoints [K-1] (what consumers compute)."""
    cdf = 1.0 / (1.0 + np.exp(-(cutpoints[None, :] - score[:, None])))
    upper = np.concatenate([cdf, np.ones((len(score), 1))], axis=1)
    lower = np.concatenate([np.zeros((len(score), 1)), cdf], axis=1)
    return upper - lower


def predict_classes(task: str, logits: np.ndarray, cutpoints: np.ndarray | None) -> np.ndarray:
    """Class indices from model outputs: argmax of K logits; for ordinal, the number of cutpoints
    below the score, which is the median of the predictive distribution (the smallest k with
    P(y <= k) >= 0.5), not necessarily its mode."""
    if task == "ordinal":
        if cutpoints is None:
            raise ValueError("ordinal prediction needs cutpoints")
        return (logits.reshape(-1)[:, None] > cutpoints[None, :]).sum(axis=1)
    return logits.argmax(axis=1)


def compute_metrics(task: str, labels: np.ndarray, preds: np.ndarray, n_classes: int) -> dict[str, float]:
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    f1s = []
    for k in range(n_classes):
        tp = int(((preds == k) & (labels == k)).sum())
        fp = int(((preds == k) & (labels != k)).sum())
        fn = int(((preds != k) & (labels == k)).sum())
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    out = {"accuracy": float((preds == labels).mean()), "macro_f1": float(np.mean(f1s))}
    if task == "ordinal":
        out["mae"] = float(np.abs(preds - labels).mean())
    return out


def majority_baseline(task: str, train_labels: list[int], test_labels: list[int], n_classes: int) -> dict[str, float]:
    majority = int(np.bincount(np.asarray(train_labels), minlength=n_classes).argmax())
    preds = np.full(len(test_labels), majority)
    return compute_metrics(task, np.asarray(test_labels), preds, n_classes)
