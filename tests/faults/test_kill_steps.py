"""kill -9 of the whole run in each step after `train` and in `start` (issue 4), then `resume`.

Each case runs the tiny flow, holds it at a point inside one step (`stages/faults.py`: the hook
only opens a window, it simulates nothing), SIGKILLs the run's whole process group (the runtime
and the task), and resumes it with `python flows/train_flow.py resume --origin-run-id <id>`.
Checked every time: the steps that had finished are cloned, not run again (their tasks in the
resumed run have an `origin_pathspec` in the killed run; the killed step and those after it do
not); nothing under the artifact root ever looks like a package unless it verifies; exactly one
package at the end; the study holds each of the `hpo.n_trials` trials once, all finished; and no file the run wrote (run folder, artifacts
and Parquet records, Metaflow's datastore with its gzip-pickled artifacts, logs and cards, W&B's
offline runs) contains the fake WANDB_API_KEY / AWS_SECRET_ACCESS_KEY planted in its environment
(W&B offline, so nothing leaves the machine). The planted-secret scan rides on these runs instead
of costing a run of its own.

Which steps run in CI: each case costs about a whole tiny run (measured 70-180 s per case on 2 busy cores). `start`,
`join` and `publish` differ in what resume must do: `start` leaves nothing to clone (the resumed
run starts over, with a new run folder and study); `join` is the first step after the foreach,
so resume must clone the split `start` -> `train` x2 and rerun the join; `publish` is killed with
a half-assembled package on disk. `export` and `quantize` are, for resume, the same case as
`join` (a linear step whose inputs are all cloned), and `publish-renamed` (package in place,
records not written) exercises the reuse of an already published package. Those three run with
TRAINFLOW_ALL_KILLS=1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from stages.errors import PackageVerificationError
from stages.faults import MARKER_ENV, PAUSE_ENV
from stages.publish import verify_package
from stages.records import query
from tests.faults.secret_scan import PLANTED, files_containing
from tests.tiny import ROOT, tiny_config, write_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PY = str(ROOT / ".venv" / "bin" / "python")
STEPS = ["start", "train", "join", "export", "quantize", "publish", "end"]
EVERY_RUN = ["start", "join", "publish"]
EXTRA = ["export", "quantize", "publish-renamed"]
CASES = EVERY_RUN + [
    pytest.param(p, marks=pytest.mark.skipif(not os.environ.get("TRAINFLOW_ALL_KILLS"), reason="TRAINFLOW_ALL_KILLS"))
    for p in EXTRA
]


def _packages_visible(root: Path) -> list[Path]:
    """Every entry under the model's artifact folder that is not hidden must be a whole package."""
    folder = root / "tiny"
    if not folder.is_dir():
        return []
    visible = [p for p in folder.iterdir() if not p.name.startswith(".")]
    for p in visible:
        try:
            verify_package(p)
        except PackageVerificationError as err:
            pytest.fail(f"a partial package is visible: {err}")
    return visible


def _run_ids(tmp: Path) -> set[str]:
    return {p.name for p in (tmp / ".metaflow" / "TrainFlow").iterdir() if p.name[0].isdigit()}


def _origins(tmp: Path, run_id: str, env: dict[str, str]) -> dict[str, list[str | None]]:
    """{step: [origin_pathspec of each task]} from the Metaflow client (in a subprocess: the client's
    metadata location is process-global)."""
    script = (
        "import json, sys; from metaflow import Run, namespace; namespace(None); "
        "print(json.dumps({s.id: [t.origin_pathspec for t in s] for s in Run(sys.argv[1])}))"
    )
    out = subprocess.run([PY, "-c", script, f"TrainFlow/{run_id}"], cwd=tmp, env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("point", CASES)
def test_kill_9_in_a_step_then_resume_publishes_once(tmp_path: Path, tiny_model_dir: Path, point: str) -> None:
    write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path, tiny_model_dir, tracking__wandb_mode="offline"))
    env = {**os.environ, "METAFLOW_USER": "faults", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path),
           "WANDB_MODE": "offline", **PLANTED}  # fmt: skip
    env.pop(PAUSE_ENV, None)
    marker = tmp_path / "in-window"
    flow = [PY, str(ROOT / "flows" / "train_flow.py")]
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([*flow, "--config", "config", str(tmp_path / "cfg.yaml"), "run"], cwd=tmp_path,
                            env={**env, PAUSE_ENV: point, MARKER_ENV: str(marker)}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.time() + 600
    while not marker.exists():
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        assert time.time() < deadline, "the run never reached the fault window"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runtime and the task, inside the step
    proc.wait()
    [killed_id] = _run_ids(tmp_path)
    before = _packages_visible(tmp_path / "artifacts")
    assert len(before) == (1 if point == "publish-renamed" else 0)

    resumed = subprocess.run([*flow, "resume", "--origin-run-id", killed_id], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    packages = _packages_visible(tmp_path / "artifacts")
    assert len(packages) == 1, packages
    assert not [p for p in (tmp_path / "artifacts" / "tiny").iterdir() if p.name.startswith(".tmp-")]
    if point == "publish-renamed":
        assert packages == before, "the package of the killed attempt is reused, not published again"

    # Finished steps were cloned; the killed step and the ones after it ran again.
    [resumed_id] = _run_ids(tmp_path) - {killed_id}
    tasks = _origins(tmp_path, resumed_id, env)
    killed_step = point.split("-")[0]
    for name in STEPS:
        origins = set(tasks[name])
        if STEPS.index(name) < STEPS.index(killed_step):
            assert all(o and o.startswith(f"TrainFlow/{killed_id}/{name}/") for o in origins), (name, origins)
        else:
            assert origins == {None}, (name, origins)
    assert len(tasks["train"]) == 2

    # The study: every trial once, all finished; the records agree.
    run_key = resumed_id if killed_step == "start" else killed_id
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "tiny" / run_key / "optuna.journal"))
    )
    trials = optuna.load_study(study_name=f"tiny-{run_key}", storage=storage).trials
    assert sorted(t.number for t in trials) == [0, 1]
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    _, rows = query(tmp_path / "artifacts", "SELECT number, state FROM trials ORDER BY number")
    assert [(n, s) for n, s in rows] == [(t.number, t.state.name) for t in sorted(trials, key=lambda t: t.number)]

    # No planted secret in anything the run wrote (the test's own config file holds none).
    assert list((tmp_path / "runs" / "tiny").glob("*/wandb/offline-run-*")), "W&B wrote its offline runs"
    leaks = files_containing([tmp_path])
    assert not leaks, "planted secrets found in:\n" + "\n".join(f"  {f}: {names}" for f, names in leaks.items())
