"""Step `end`: what the run prints about the package it published."""

from __future__ import annotations

from typing import Any

from trainflow.release.metadata import read_metadata


def summarize(package_path: str) -> dict[str, Any]:
    """Where the package is and the headline metrics from its metadata."""
    meta = read_metadata(package_path)
    m = meta.metrics
    return {
        "package": package_path,
        "version": meta.version,
        "best_trial": meta.hpo.best_trial,
        "hyperparameters": {k: meta.hyperparameters[k] for k in ("learning_rate", "weight_decay", "warmup_ratio")},
        "validation": m.validation,
        "test_fp32_onnx": m.test_fp32_onnx,
        "test_int8_onnx": m.test_int8_onnx,
        "test_majority_baseline": m.test_majority_baseline,
        "parity_max_abs_diff": m.parity.max_abs_diff,
        "int8_accuracy_drop": m.int8_accuracy_drop,
    }
