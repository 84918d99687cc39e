"""What a run's records say across kills and resumes, with real kills: a killed run whose tasks
are gone shows `interrupted`; a resume, failed or not, updates the record of the run it resumes
(no new row); a step that runs out of memory ends in one line; a no-op `resume publish` leaves the
run's cost and duration as they were."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny import ROOT, tiny_config, write_config
from trainflow.app.cli import main as cli
from trainflow.records.store import query, recent_runs

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PY = sys.executable


def _flow(tmp: Path, *command: str) -> list[str]:
    config = ["--config", "config", str(tmp / "cfg.yaml")] if command[0] == "run" else []
    return [PY, str(ROOT / "flows" / "train_flow.py"), *config, *command]


def _runs(art: Path) -> list:
    return recent_runs(art, 10)


def test_kill_interrupted_failed_resume_resume_and_a_no_op_resume(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    write_config(tmp_path / "cfg.yaml", tiny_config(
        tmp_path, tiny_model_dir, train__max_steps=400, train__checkpoint_every=20, train__eval_every=200,
        hpo__heartbeat_interval=1, hpo__heartbeat_grace_period=3))  # fmt: skip
    env = {**os.environ, "METAFLOW_USER": "records", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    art = tmp_path / "artifacts"
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(_flow(tmp_path, "run"), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not list(tmp_path.glob("runs/tiny/*/trials/trial-*/checkpoint/step-*/meta.json")):
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(0.2)
    assert [r.status for r in _runs(art)] == ["running"], "alive while its tasks beat"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(4)  # past the 3 s grace period: nobody beats any more
    (origin,) = _runs(art)
    assert origin.status == "interrupted"
    assert cli(["runs", "--artifact-root", str(art)]) == 0 and "interrupted" in capsys.readouterr().out

    # A resume that fails (the export runs out of memory): one line, and the same record says so.
    failing = subprocess.run(_flow(tmp_path, "resume"), cwd=tmp_path, capture_output=True, text=True, timeout=900,
                             env={**env, "TRAINFLOW_TEST_MODE": "1", "TRAINFLOW_FAULT_RAISE": "export-write:MemoryError"})  # fmt: skip
    assert failing.returncode == 1
    last = failing.stderr.strip().splitlines()[-1]
    assert last.startswith("error: export: the machine ran out of memory;") and "resume" in last
    assert "Traceback" not in failing.stdout + failing.stderr
    (after,) = _runs(art)
    assert (after.run_key, after.status, after.step) == (origin.run_key, "failed", "export") and after.resumed_as

    done = subprocess.run(_flow(tmp_path, "resume"), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (published,) = _runs(art)
    assert (published.run_key, published.status) == (origin.run_key, "published")
    assert published.resumed_as and published.resumed_as != after.resumed_as
    total = "SELECT sum(cost), sum(seconds) FROM costs WHERE run_key = ?"
    cost = query(art, total, [origin.run_key])[1][0]
    duration = published.duration_s
    assert cost[0] > 0 and duration > 0

    # A no-op `resume publish`: the cloned steps are priced as they ran, the idle time not counted.
    time.sleep(40)
    again = subprocess.run(_flow(tmp_path, "resume", "publish"), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=900)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    (republished,) = _runs(art)
    cost2 = query(art, total, [origin.run_key])[1][0]
    # The idle wait (40 s, more than the priced time) is not counted. The cloned steps' times, read
    # back through Metaflow's client, vary by up to about 20 % between two publishes, hence 25 %.
    assert cost2[0] == pytest.approx(cost[0], rel=0.25) and cost2[1] == pytest.approx(cost[1], rel=0.25)
    assert republished.duration_s == pytest.approx(duration, rel=0.25), "the resume's idle wait is not counted"
    assert len(list((art / "tiny").iterdir())) == 1, "published once"
