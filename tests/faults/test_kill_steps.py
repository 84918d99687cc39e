"""kill -9 of the whole run inside every step after `train` and in `start` (issue 4), each
followed by `resume`, all in one chain so that every point runs in CI.

The tiny flow is started held at a point inside `start` (`trainflow/core/faults.py`: the hook only opens
a window, it simulates nothing); the test SIGKILLs the run's whole process group (the runtime and
the task) and resumes it with `python flows/train_flow.py resume --origin-run-id <id>`, held at
the next point, and so on: start, join, export, quantize, publish (half-assembled package on
disk), publish-renamed (package in place, records not written), then a last resume finishes.
After every kill: nothing under the artifact root looks like a package unless it verifies. For
every resumed run: the steps that had finished in the run it resumed are cloned, not run again
(their tasks have an `origin_pathspec` in that run); the killed step and those after it are not.
At the end: exactly one package (the one renamed into place before the last kill, reused), the
study holds each of the `hpo.n_trials` trials once, all finished, and the records agree; and no
file the runs wrote (run folder, artifacts and Parquet records, Metaflow's datastore with its
gzip-pickled artifacts, logs and cards, W&B's offline runs) contains the fake WANDB_API_KEY /
AWS_SECRET_ACCESS_KEY planted in their environment (W&B offline, nothing leaves the machine).

One chain instead of one run per point: a separate run per point cost a whole tiny run each
(70-180 s on 2 busy cores), so only three fitted in CI; chained, a kill costs the killed step and
one resume. `start` leaves nothing to clone (the resumed run starts over, with a new run folder
and study); `join` is the first step after the foreach, so resume must clone the split `start` ->
`train` x2; `export` and `quantize` are linear steps whose inputs are all clones of clones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.faults.secret_scan import PLANTED, files_containing
from tests.tiny import ROOT, tiny_config, write_config
from trainflow.core.errors import PackageVerificationError
from trainflow.core.faults import MARKER_ENV, PAUSE_ENV, TEST_MODE_ENV
from trainflow.records.store import query
from trainflow.release.package import verify_package

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PY = sys.executable  # the interpreter running the tests (make test: .venv; pixi run test: pixi's)
STEPS = ["start", "train", "join", "refit", "export", "quantize", "publish", "end"]
POINTS = ["start", "join", "export", "quantize", "publish", "publish-renamed"]


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


def _step(point: str) -> str:
    return point.split("-")[0]


def test_kill_9_in_every_step_then_resume_publishes_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path, tiny_model_dir, tracking__wandb_mode="offline"))
    env = {**os.environ, "METAFLOW_USER": "faults", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path),
           "WANDB_MODE": "offline", **PLANTED}  # fmt: skip
    env.pop(PAUSE_ENV, None)
    env[TEST_MODE_ENV] = "1"  # the pause hook works only in test mode
    flow = [PY, str(ROOT / "flows" / "train_flow.py")]
    runs: list[str] = []  # run ids in order: each one resumes the one before
    for point in POINTS:
        marker = tmp_path / f"in-window-{point}"
        command = (
            ["resume", "--origin-run-id", runs[-1]]
            if runs
            else ["--config", "config", str(tmp_path / "cfg.yaml"), "run"]
        )
        log = (tmp_path / f"{point}.log").open("w")
        proc = subprocess.Popen([*flow, *command], cwd=tmp_path, env={**env, PAUSE_ENV: point, MARKER_ENV: str(marker)},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.time() + 600
        while not marker.exists():
            assert proc.poll() is None, f"{point}: " + (tmp_path / f"{point}.log").read_text()[-3000:]
            assert time.time() < deadline, f"the run never reached the fault window {point}"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the runtime and the task, inside the step
        proc.wait()
        [new] = _run_ids(tmp_path) - set(runs)
        runs.append(new)
        assert len(_packages_visible(tmp_path / "artifacts")) == (1 if point == "publish-renamed" else 0), point
    renamed = _packages_visible(tmp_path / "artifacts")

    resumed = subprocess.run([*flow, "resume", "--origin-run-id", runs[-1]], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    [final] = _run_ids(tmp_path) - set(runs)
    runs.append(final)

    packages = _packages_visible(tmp_path / "artifacts")
    assert packages == renamed, "the package renamed into place before the last kill is reused, not published again"
    assert not [p for p in (tmp_path / "artifacts" / "tiny").iterdir() if p.name.startswith(".tmp-")]

    # In every resumed run, the steps finished in the run it resumed were cloned from it; the killed
    # step and the ones after it ran again (or had not run yet when that run was killed in turn).
    for killed_id, point, resumed_id in zip(runs[:-1], POINTS, runs[1:], strict=True):
        tasks = _origins(tmp_path, resumed_id, env)
        for name, origins in tasks.items():
            if STEPS.index(name) < STEPS.index(_step(point)):
                assert all(o and o.startswith(f"TrainFlow/{killed_id}/{name}/") for o in origins), (
                    point,
                    name,
                    origins,
                )
            else:
                assert set(origins) == {None}, (point, name, origins)
        assert len(tasks["train"]) == 2, point
    assert set(_origins(tmp_path, final, env)) == set(STEPS)

    # The study (keyed by the run whose `start` finished): every trial once, all finished.
    run_key = runs[1]
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
