"""The whole flow with a declared search space, deployment limits and a refit: kill -9 the run while
the refit trains, `resume` it; the refit continues from its last checkpoint and the package
records the search (its sampler, pruner, limits and each trial's deployed cost) and the refit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny import ROOT, tiny_config, write_config
from trainflow.records.store import query
from trainflow.release.package import verify_package

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PY = sys.executable


def _flow(tmp: Path, command: str) -> list[str]:
    config = ["--config", "config", str(tmp / "cfg.yaml")] if command == "run" else []
    return [PY, str(ROOT / "flows" / "train_flow.py"), *config, command]


def test_a_refit_killed_mid_training_resumes_and_the_package_records_the_search(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, train__max_steps=240, train__eval_every=120,
                      train__checkpoint_every=20, hpo__n_trials=2, hpo__n_workers=1, hpo__refit=True,
                      hpo__pruner={"type": "successive_halving", "min_resource": 120},
                      hpo__sampler="random", hpo__constraints={"max_size_mb": 50, "max_latency_ms": 1000},
                      hpo__search_space={"train.learning_rate": {"low": 1e-4, "high": 1e-3, "log": True},
                                         "train.batch_size": {"choices": [4, 8]}})  # fmt: skip
    write_config(tmp_path / "cfg.yaml", cfg)
    env = {**os.environ, "METAFLOW_USER": "faults", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(_flow(tmp_path, "run"), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 600
    while not list(tmp_path.glob("runs/tiny/*/refit/checkpoint/step-*/meta.json")):
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        assert time.time() < deadline, "no refit checkpoint appeared"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runtime and the refit task, mid-training
    proc.wait()
    assert not (tmp_path / "artifacts" / "tiny").exists(), "nothing is published by a killed run"

    resumed = subprocess.run(_flow(tmp_path, "resume"), cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=900)  # fmt: skip
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert "refit: continuing from checkpoint" in out
    (package,) = list((tmp_path / "artifacts" / "tiny").iterdir())
    verify_package(package)
    meta = json.loads((package / "metadata.json").read_text())
    hpo = meta["hpo"]
    refit = hpo["refit"]
    assert refit["trial"] == hpo["best_trial"] and refit["resumed_from_step"] >= 20
    assert refit["train_rows"] == meta["dataset"]["splits"]["train"] + meta["dataset"]["splits"]["validation"]
    assert refit["steps"] in (120, 240) and refit["in_sample_metrics"]
    assert hpo["sampler"] == "random" and hpo["pruner"] == "successive_halving"
    assert sorted(hpo["searched"]) == ["train.batch_size", "train.learning_rate"]
    assert hpo["constraints"]["max_size_mb"] == 50 and hpo["constraints"]["best_size_mb"] < 50
    # The exported model is the refit's: lineage goes trial model -> refit -> best -> ONNX.
    nodes = {n["id"]: n for n in meta["lineage"]["nodes"]}
    assert nodes["refit-model"]["parents"][0]["id"] == f"trial-{hpo['best_trial']}/model"
    assert nodes["best-model"]["sha256"] == nodes["refit-model"]["sha256"]
    assert "/refit/best/" in nodes["refit-model"]["path"]
    assert meta["hyperparameters"]["batch_size"] in (4, 8)
    card = (package / "README.md").read_text()
    assert "Refitted on train + validation" in card and "Searched (random sampler, successive_halving pruner)" in card
    # Each trial's deployed cost is in the records and the CLI.
    _, rows = query(tmp_path / "artifacts", "SELECT latency_ms, size_mb, feasible FROM trials")
    assert len(rows) == 2 and all(r[0] > 0 and r[1] > 0 and r[2] is True for r in rows)
    shown = subprocess.run([PY, "-m", "trainflow.app.cli", "trials", meta["metaflow"]["run_key"], "--artifact-root",
                            str(tmp_path / "artifacts")], capture_output=True, text=True, env={**env, "COLUMNS": "250"})  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "latency_ms" in shown.stdout and "feasible" in shown.stdout and "True" in shown.stdout
