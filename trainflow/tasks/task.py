"""What a task's raw model outputs mean: decisions, probabilities, metrics and agreement, for every
task type (NumPy only, so training, the parity and INT8 gates, the package loader and a consumer
read outputs alike).

| task           | outputs    | decision                                  | beside the model (head.json) |
|----------------|------------|-------------------------------------------|------------------------------|
| classification | [B, K]     | argmax                                    | -                            |
| ordinal        | [B, 1]     | number of cutpoints below the score       | cutpoints                    |
| multilabel     | [B, L]     | sigmoid(output) >= the label's threshold  | thresholds (tuned on validation) |
| regression     | [B, 1]     | score = output * std + mean               | scale: [mean, std] of the training targets |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainflow.core.config import DEFAULT_METRIC, TASK_METRICS  # noqa: F401 - re-exported: what each task reports
from trainflow.tasks.heads import compute_metrics, ordinal_probabilities, predict_classes
from trainflow.tasks.multilabel import DEFAULT_THRESHOLD, multilabel_metrics, predict_sets, sigmoid, tune_thresholds
from trainflow.tasks.regression import regression_metrics

TASK_TYPES = ("classification", "ordinal", "multilabel", "regression")

# The metric the INT8 gate holds within quantize.max_accuracy_drop of FP32 (higher is better for all).
GATE_METRIC = {"classification": "accuracy", "ordinal": "accuracy", "multilabel": "micro_f1", "regression": "pearson"}
# Regression outputs "agree" (parity, batch invariance) when within this share of the targets' std.
REGRESSION_AGREEMENT = 0.01


def n_outputs(task: str, labels: Sequence[str]) -> int:
    """Outputs of the model: one score for ordinal and regression, one per label otherwise."""
    return 1 if task in ("ordinal", "regression") else len(labels)


@dataclass(frozen=True)
class TaskHead:
    """A task and what lies beside the model (module docstring): reads raw outputs [B, n]."""

    task: str
    labels: tuple[str, ...] = ()
    cutpoints: tuple[float, ...] | None = None
    thresholds: tuple[float, ...] | None = None
    scale: tuple[float, float] | None = None  # regression: (mean, std) of the training targets

    @classmethod
    def from_dict(cls, head: dict[str, Any]) -> TaskHead:
        """From a head.json (or the package metadata's task fields)."""

        def tup(key: str) -> tuple | None:
            value = head.get(key)
            return None if value is None else tuple(float(v) for v in value)

        return cls(str(head["task"]), tuple(head.get("labels") or ()), tup("cutpoints"), tup("thresholds"),
                   tup("scale"))  # type: ignore[arg-type]  # fmt: skip

    @property
    def gate_metric(self) -> str:
        return GATE_METRIC[self.task]

    @property
    def n_outputs(self) -> int:
        return n_outputs(self.task, self.labels)

    def _cut(self) -> np.ndarray | None:
        return None if self.cutpoints is None else np.asarray(self.cutpoints)

    def scores(self, outputs: np.ndarray) -> np.ndarray:
        """Regression: the predicted values [B] on the targets' scale."""
        mean, std = self.scale or (0.0, 1.0)
        return np.asarray(outputs, dtype=np.float64).reshape(-1) * std + mean

    def probabilities(self, outputs: np.ndarray) -> np.ndarray | None:
        """[B, K] class probabilities (classification, ordinal), [B, L] independent per-label
        probabilities (multilabel); None for regression."""
        outputs = np.asarray(outputs, dtype=np.float64)
        if self.task == "ordinal":
            return ordinal_probabilities(outputs.reshape(-1), self._cut())  # type: ignore[arg-type]
        if self.task == "multilabel":
            return sigmoid(outputs)
        if self.task == "regression":
            return None
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        """Class indices [B]; multilabel: [B, L] booleans; regression: the scores [B]."""
        if self.task == "multilabel":
            thresholds = self.thresholds or (DEFAULT_THRESHOLD,) * np.asarray(outputs).shape[1]
            return predict_sets(sigmoid(outputs), np.asarray(thresholds))
        if self.task == "regression":
            return self.scores(outputs)
        return predict_classes(self.task, np.asarray(outputs), self._cut())

    def agree(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per row: do two sets of outputs give the same decision? (regression: scores within
        REGRESSION_AGREEMENT of the targets' standard deviation)."""
        da, db = self.decide(a), self.decide(b)
        if self.task == "multilabel":
            return (da == db).all(axis=1)
        if self.task == "regression":
            std = self.scale[1] if self.scale else 1.0
            return np.abs(da - db) <= REGRESSION_AGREEMENT * std
        return da == db

    def metrics(self, targets: Sequence[Any] | np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """The task's metrics (TASK_METRICS) of outputs against targets (class indices; multi-hot
        rows; numbers)."""
        if self.task == "multilabel":
            return multilabel_metrics(np.asarray(list(targets), dtype=np.float32), self.decide(outputs))
        if self.task == "regression":
            return regression_metrics(np.asarray(targets, dtype=np.float64), self.scores(outputs))
        return compute_metrics(self.task, np.asarray(targets), self.decide(outputs), len(self.labels))

    def with_tuned_thresholds(self, targets: Sequence[Any] | np.ndarray, outputs: np.ndarray) -> TaskHead:
        """Multilabel: a head whose per-label thresholds are the best F1's on these rows."""
        if self.task != "multilabel":
            return self
        tuned = tune_thresholds(sigmoid(outputs), np.asarray(list(targets), dtype=np.float32))
        return TaskHead(self.task, self.labels, None, tuple(float(t) for t in tuned), None)

    def describe_output(self) -> str:
        """The ONNX output and how to read it, for the package metadata."""
        k = self.n_outputs
        return {
            "classification": f"logits: [batch, {k}]; class = argmax",
            "ordinal": "logits: [batch, 1] scalar score s; P(y <= k) = sigmoid(cutpoints[k] - s); class = #(cutpoints < s)",
            "multilabel": f"logits: [batch, {k}]; P(label) = sigmoid(logit); label set = labels whose P >= thresholds[label]",
            "regression": "logits: [batch, 1]; value = logit * scale[1] + scale[0]",
        }[self.task]  # fmt: skip


def baseline(task: str, train_targets: Sequence[Any], test_targets: Sequence[Any], labels: Sequence[str]) -> dict:
    """The metrics of the trivial predictor: the training majority class (classification,
    ordinal), each label predicted when most training rows carry it (multilabel), the training mean
    (regression)."""
    if task == "regression":
        from trainflow.tasks.regression import mean_baseline

        return mean_baseline(np.asarray(train_targets, dtype=float), np.asarray(test_targets, dtype=float))
    if task == "multilabel":
        train = np.asarray(list(train_targets), dtype=np.float32).reshape(-1, len(labels))
        test = np.asarray(list(test_targets), dtype=np.float32).reshape(-1, len(labels))
        majority = train.mean(axis=0) > 0.5
        return multilabel_metrics(test, np.repeat(majority[None, :], len(test), axis=0))
    from trainflow.tasks.heads import majority_baseline

    return majority_baseline(task, list(train_targets), list(test_targets), len(labels))
