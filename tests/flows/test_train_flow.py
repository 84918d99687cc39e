"""One end-to-end run of flows/train_flow.py through metaflow.Runner on tiny data (the session's
`tiny_flow_run`, shared with the card and W&B tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainflow.records.store import query
from trainflow.release.package import verify_package

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_flow_publishes_a_verified_package_and_records(tiny_flow_run) -> None:
    run, tmp_path = tiny_flow_run.run, tiny_flow_run.root
    data = run.data
    package = Path(data.package.path)
    assert package.parent == tmp_path / "artifacts" / "tiny"
    assert verify_package(package)
    meta = json.loads((package / "metadata.json").read_text())
    assert meta["version"] == data.package.version
    assert meta["task"] == "classification" and meta["label_map"] == {"0": "rotten", "1": "fresh"}
    assert meta["dataset"]["sha256"] == data.ctx.snapshot.sha256
    assert meta["metaflow"]["pathspec"].startswith(f"TrainFlow/{run.id}/publish/")
    assert meta["onnx"]["opset"] == 17
    assert meta["metrics"]["parity"]["max_abs_diff"] <= 1e-4
    assert set(meta["hyperparameters"]) >= {"learning_rate", "weight_decay", "warmup_ratio", "max_steps"}
    assert meta["packages"]["onnxruntime"] and meta["base_model"]["sha256"]
    assert len(meta["git_commit"]) >= 40 or meta["git_commit"] == "unknown"
    assert data.best.number in {0, 1} and len(data.trial_records) == 2

    art = tmp_path / "artifacts"
    assert query(art, "SELECT count(*) FROM trials")[1] == [(2,)]
    _, pkg_rows = query(art, "SELECT version, n_trials FROM packages")
    assert pkg_rows == [(data.package.version, 2)]
    assert query(art, "SELECT status FROM runs")[1] == [("published",)]
    offline_runs = sorted((Path(data.ctx.run_dir) / "wandb").glob("offline-run-*"))
    trial_runs = [r for r in offline_runs if "-trial-" in r.name]
    assert len(trial_runs) == 2, "one W&B run per trial"
    assert all(any(r.glob("*.wandb")) for r in offline_runs)

    # Cost from the run's own task timings (read through the Metaflow client in publish),
    # lineage, and the registry entry.
    steps = [s["step"] for s in meta["cost"]["by_step"]]
    assert steps == ["start", "train", "join", "refit", "export", "quantize", "publish"], steps
    assert next(s for s in meta["cost"]["by_step"] if s["step"] == "train")["tasks"] == 2
    assert query(art, "SELECT cost FROM runs")[1][0][0] == meta["cost"]["total"] > 0
    kinds = [n["kind"] for n in meta["lineage"]["nodes"]]
    assert kinds.count("trial_model") == 2 and kinds[-3:] == ["best_model", "onnx_fp32", "onnx_int8"]
    from trainflow.release.registry import list_versions

    assert [(v.version, v.stage) for v in list_versions(artifact_root=art)] == [(data.package.version, "staging")]
