"""Fault injection with real process kills (issue 4, first cases): kill -9 a running flow in the
middle of training, then `resume` it; the killed trials continue from their last checkpoint."""

from __future__ import annotations

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
PY = sys.executable  # the interpreter running the tests (make test: .venv; pixi run test: pixi's)


def _flow(tmp: Path, command: str) -> list[str]:
    # `resume` takes the config of the run it resumes; it refuses --config.
    config = ["--config", "config", str(tmp / "cfg.yaml")] if command == "run" else []
    return [PY, str(ROOT / "flows" / "train_flow.py"), *config, command]


def test_kill_9_during_training_then_resume_publishes_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path, tiny_model_dir, train__max_steps=400,
                                                    train__checkpoint_every=20, train__eval_every=200))  # fmt: skip
    env = {**os.environ, "METAFLOW_USER": "faults", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(_flow(tmp_path, "run"), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not list(tmp_path.glob("runs/tiny/*/trials/trial-*/checkpoint/step-*/meta.json")):
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runtime and every task, mid-training
    proc.wait()
    assert not (tmp_path / "artifacts" / "tiny").exists(), "nothing is published by a killed run"

    resumed = subprocess.run(_flow(tmp_path, "resume"), cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    packages = list((tmp_path / "artifacts" / "tiny").iterdir())
    assert len(packages) == 1 and not packages[0].name.startswith(".tmp-")
    verify_package(packages[0])
    # The killed trials were continued, not asked again: exactly n_trials, all finished.
    _, rows = query(tmp_path / "artifacts", "SELECT state, count(*) FROM trials GROUP BY state")
    assert sum(n for _, n in rows) == 2 and {s for s, _ in rows} <= {"COMPLETE", "PRUNED"}
    assert "continuing trial" in resumed.stdout + resumed.stderr
    # ... from their local checkpoints (resume gives tasks new ids, so metaflow-checkpoint loads
    # nothing; the run folder is the same because `start` is cloned): at most one interval lost.
    _, rows = query(tmp_path / "artifacts", "SELECT number, resumed_from_step FROM trials ORDER BY number")
    steps = [r for _, r in rows if r is not None]  # a PRUNED trial records no resume step
    assert steps and max(steps) >= 20 and all(r % 20 == 0 for r in steps), rows
    assert "continuing from checkpoint" in resumed.stdout + resumed.stderr
