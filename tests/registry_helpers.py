"""Cheap real packages for the registry, retention and CLI tests: the tiny model's real ONNX
export published with `publish_package`, with chosen test metrics and creation times."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainflow.release.metadata import PackageMetadata
from trainflow.release.package import assemble_package
from trainflow.release.publish import PackageResult, publish_package


def sample_metadata(
    version: str,
    *,
    model_name: str = "m",
    test: dict[str, float] | None = None,
    int8: dict[str, float] | None = None,
    created_at: str = "2026-01-01T00:00:00+00:00",
    task: str = "classification",
    **overrides: Any,
) -> PackageMetadata:
    """A complete, valid metadata.json for a stand-in package with the given test metrics."""
    test = test or {"accuracy": 0.8, "macro_f1": 0.8}
    int8 = int8 or dict(test)
    latency = {"p50_ms": 1.0, "p95_ms": 2.0, "n": 4}
    raw: dict[str, Any] = {
        "model_name": model_name, "version": version, "created_at": created_at, "task": task,
        "label_map": {"0": "rotten", "1": "fresh"}, "cutpoints": None,
        "onnx": {"opset": 17, "inputs": ["input_ids", "attention_mask"], "output": "logits", "max_length": 32,
                 "session_options": {}},
        "base_model": {"name": "tiny", "sha256": None, "parameters": 1},
        "hyperparameters": {"learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0},
        "hpo": {"metric": "accuracy", "direction": "maximize", "best_trial": 0, "n_trials": 1, "states": {"COMPLETE": 1}},
        "metrics": {
            "validation": dict(test), "test_fp32_onnx": test, "test_int8_onnx": int8,
            "test_majority_baseline": {"accuracy": 0.5}, "int8_accuracy_drop": 0.0,
            "parity": {"n_samples": 1, "max_abs_diff": 0.0, "mean_abs_diff": 0.0, "prediction_agreement": 1.0,
                       "atol": 1e-4},
            "latency_batch1_fp32": latency, "latency_batch1_int8": latency, "size_bytes": {"fp32": 1, "int8": 1},
        },
        "quantization": {"recipe": {}, "node_counts": {}, "chosen_recipe": "r", "max_accuracy_drop": 0.01,
                         "selection": "", "graph_optimization": {}, "session_options": {}, "search": []},
        "dataset": {"version": "d-1", "sha256": "0" * 64, "source": "d.csv", "rows": 10, "splits": {},
                    "labels": {}},
        "lineage": {"dataset_sha256": "0" * 64, "study": "s", "trial": 0, "trial_model_dir": None, "nodes": []},
        "git_commit": "unknown", "metaflow": {"pathspec": "TrainFlow/1/publish/1", "run_key": "1"},
        "packages": {}, "config": {}, "cost": {"measured": False},
    }  # fmt: skip
    raw.update(overrides)
    return PackageMetadata.model_validate(raw)


def package_sources(tmp: Path, tiny_onnx: Path) -> Path:
    """The tiny export plus a stand-in INT8 file (publishing copies files, it does not run them)."""
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    for p in tiny_onnx.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    (src / "model_int8.onnx").write_bytes((tiny_onnx / "model.onnx").read_bytes()[:1000])
    return src


def make_package(
    root: Path,
    src: Path,
    version: str,
    *,
    accuracy: float = 0.8,
    int8_accuracy: float | None = None,
    created_at: str = "2026-01-01T00:00:00+00:00",
    model_name: str = "m",
    registered: bool = True,
) -> PackageResult:
    """Publish `version` with the given test accuracies (registered as staging, as
    `stages.publish.publish_run` does), or with `registered=False` put it in place unregistered."""
    int8 = accuracy if int8_accuracy is None else int8_accuracy
    metadata = sample_metadata(version, model_name=model_name, test={"accuracy": accuracy},
                               int8={"accuracy": int8}, created_at=created_at)  # fmt: skip
    if registered:
        return publish_package(artifact_root=root, sources=[src], metadata=metadata)
    # A folder the registry never saw (copied in by hand): assembled, then renamed by us.
    assembled = assemble_package(artifact_root=root, sources=[src], metadata=metadata)
    os.rename(assembled.tmp, assembled.target)
    assembled.release()
    return PackageResult(path=str(assembled.target), version=version, files=assembled.files)


def tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
