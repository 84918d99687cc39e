"""The whole flow with a refit and distillation into two students (one cut from the teacher, one
base model of its own) on two student workers: kill -9 the run while the students train, `resume`
it; the students continue from their checkpoints, the teacher's outputs are read back (not
recomputed), and the package ships the cut student with its lineage (refit teacher -> student
checkpoint -> student -> ONNX), metadata, model card and W&B runs."""

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
from trainflow.release.package import verify_package

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PY = sys.executable


def _flow(tmp: Path, command: str) -> list[str]:
    config = ["--config", "config", str(tmp / "cfg.yaml")] if command == "run" else []
    return [PY, str(ROOT / "flows" / "train_flow.py"), *config, command]


def test_a_student_killed_mid_training_resumes_and_ships_with_its_lineage(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, hpo__n_trials=1, hpo__n_workers=1, tracking__wandb_mode="offline",
                      hpo__refit=True, train__eval_every=150, train__checkpoint_every=20, model__frozen_layers=1,
                      distill={"enabled": True, "student_layers": [1], "student_bases": [str(tiny_model_dir)],
                               "n_trials": 1, "n_workers": 2, "max_accuracy_drop": 1.0, "hidden_loss": 0.1,
                               "search_space": {"train.max_steps": {"choices": [300]}}})  # fmt: skip
    write_config(tmp_path / "cfg.yaml", cfg)
    env = {**os.environ, "METAFLOW_USER": "faults", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path),
           "WANDB_MODE": "offline"}  # fmt: skip
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(_flow(tmp_path, "run"), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 600
    while not list(tmp_path.glob("runs/tiny/*/distill/trials/trial-*/checkpoint/step-*/meta.json")):
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        assert time.time() < deadline, "no student checkpoint appeared"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runtime and the student's task, mid-training
    proc.wait()
    first = (tmp_path / "run.log").read_text()
    assert first.count("teacher outputs: computed") == 1
    assert not (tmp_path / "artifacts" / "tiny").exists(), "nothing is published by a killed run"

    resumed = subprocess.run(_flow(tmp_path, "resume"), cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=900)  # fmt: skip
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert "teacher outputs: reusing" in out and "teacher outputs: computed" not in out
    assert "continuing from checkpoint" in out

    (package,) = list((tmp_path / "artifacts" / "tiny").iterdir())
    verify_package(package)
    meta = json.loads((package / "metadata.json").read_text())
    d = meta["distillation"]
    assert d["chosen"] == "student" and d["temperature"] == 2.0 and d["alpha"] == 0.5 and d["hidden_loss"] == 0.1
    teacher, student = d["teacher"], d["student"]
    assert (teacher["layers"], student["layers"]) == (2, 1) and student["params"] < teacher["params"]
    for side in (teacher, student):
        assert side["latency_ms"] > 0 and side["size_mb"] > 0
        assert set(side["validation"]) >= {"accuracy"} and set(side["test"]) >= {"accuracy"}
    assert len(d["teacher_outputs_sha256"]) == 64 and d["reason"].startswith("student layers-1 ships")
    assert student["cut_from_teacher"] and {c["name"] for c in d["candidates"]} == {"layers-1", tiny_model_dir.name}
    # The shipped files describe the student: its config, its size, its training steps.
    assert json.loads((package / "config.json").read_text())["num_hidden_layers"] == 1
    assert meta["base_model"]["parameters"] == student["params"] and meta["hyperparameters"]["max_steps"] == 300
    assert meta["hyperparameters"]["frozen_layers"] == 0  # students train every layer
    assert meta["metrics"]["validation"] == student["validation"]

    nodes = {n["id"]: n for n in meta["lineage"]["nodes"]}
    teacher_node, s = "refit-model", f"student-{student['trial']}"  # the refit is the teacher
    dataset = f"dataset:{meta['dataset']['version']}"
    assert [p["id"] for p in nodes[f"{s}/checkpoint"]["parents"]] == [teacher_node, dataset]
    assert [p["id"] for p in nodes[f"{s}/model"]["parents"]] == [teacher_node, dataset, f"{s}/checkpoint"]
    assert nodes["best-model"]["sha256"] == nodes[f"{s}/model"]["sha256"]
    assert nodes["onnx-fp32"]["parents"][0]["id"] == "best-model"
    shown = subprocess.run([PY, "-m", "trainflow.app.cli", "lineage", meta["version"], "--artifact-root",
                            str(tmp_path / "artifacts")], capture_output=True, text=True, env=env)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"{teacher_node} → {s}/checkpoint → {s}/model → best-model" in " ".join(shown.stdout.split())

    card = (package / "README.md").read_text()
    assert "## Distillation" in card and "| student (shipped) | 1 |" in card and "| teacher | 2 |" in card
    assert "into a 1-layer student (" in card and 'base_model: "' + str(tiny_model_dir) in card
    steps = [s["step"] for s in meta["cost"]["by_step"]]
    assert steps == ["start", "train", "join", "refit", "teacher", "distill", "pick", "export", "quantize", "publish"]
    assert next(x for x in meta["cost"]["by_step"] if x["step"] == "distill")["tasks"] == 2
    wandb_runs = [p.name for p in (Path(meta["lineage"]["trial_model_dir"]).parents[3] / "wandb").glob("offline-run-*")]
    # One W&B run per student trial (a resumed attempt continues the same run id in a new folder).
    assert {name.split("-student-")[1] for name in wandb_runs if "-student-" in name} == {"0", "1"}, wandb_runs
