"""kill -9 of an HPO worker process (issue 4): the killed trial continues from its last local
checkpoint, and a trial whose worker never comes back is failed by the Optuna heartbeat and
re-run once.

Workers run as real processes (`python -m tests.faults.test_trial_kill CFG STORAGE WORKER WORK_DIR`,
the same `run_worker` the flow's train step calls) and are killed with SIGKILL: no handler runs,
no checkpoint is taken on the way out.
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
from safetensors.torch import load_file

from tests.tiny import ROOT, rt_texts, tiny_config
from trainflow.core.config import parse_config_dict
from trainflow.core.layout import trial_dir
from trainflow.data.dataset import SplitData
from trainflow.search.study import open_storage, open_study
from trainflow.search.worker import run_worker
from trainflow.training.resume import read_checkpoint_meta

pytestmark = [pytest.mark.slow]
PY = sys.executable  # the interpreter running the tests (make test: .venv; pixi run test: pixi's)
GRACE = 3


def _splits() -> tuple[SplitData, SplitData]:
    texts, labels = rt_texts(80), [i % 2 for i in range(80)]
    return (
        SplitData([str(i) for i in range(60)], texts[:60], labels[:60]),
        SplitData([str(i) for i in range(60, 80)], texts[60:], labels[60:]),
    )


def _cfg(tmp: Path, model_dir: Path, **over) -> Path:
    base = dict(train__max_steps=160, train__checkpoint_every=20, train__eval_every=40, train__num_threads=1,
                train__device="cpu", hpo__pruner="none")  # fmt: skip
    cfg = tiny_config(tmp, model_dir, **{**base, **over})
    path = tmp / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


def _run(cfg_path: Path, storage: Path | str, worker: int, work: Path):
    """One worker attempt in this process (the attempt that comes back)."""
    train, val = _splits()
    cfg = parse_config_dict(json.loads(cfg_path.read_text()))
    return run_worker(cfg=cfg, storage=str(storage), study_name="s", worker=worker, train=train, validation=val,
                      work_dir=work, group="g")  # fmt: skip


def _spawn_and_kill(cfg_path: Path, storage: Path, worker: int, work: Path, trial: int, min_step: int = 20) -> int:
    """Start a worker process, SIGKILL it once trial `trial` has a checkpoint at `min_step` or later;
    return the step of the last checkpoint on disk after the kill."""
    log = (work.parent / f"worker{worker}-trial{trial}.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([PY, "-m", "tests.faults.test_trial_kill", str(cfg_path), str(storage), str(worker),
                             str(work)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    checkpoints = trial_dir(work, trial) / "checkpoint"
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, (work.parent / log.name).read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        meta = read_checkpoint_meta(checkpoints)
        if meta is not None and meta["step"] >= min_step:
            break
        time.sleep(0.05)
    time.sleep(0.2)  # into the next checkpoint interval: these steps are what the kill loses
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return read_checkpoint_meta(checkpoints)["step"]


def _study(cfg_path: Path, storage: Path) -> optuna.Study:
    return open_study(parse_config_dict(json.loads(cfg_path.read_text())), str(storage), "s")


def _wait_stale() -> None:
    time.sleep(GRACE + 1.5)  # the heartbeat thread died with the process; let the grace period pass


def test_killed_trial_continues_from_its_last_checkpoint_and_ends_as_if_never_killed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """`resume` (new task ids, nothing loaded by metaflow-checkpoint) finds the trial's local
    checkpoint: the work lost is what ran after it (under one checkpoint interval)."""
    cfg = _cfg(tmp_path, tiny_model_dir, hpo__n_trials=1, hpo__n_workers=1)
    (ref_dir := tmp_path / "ref").mkdir()
    (run_dir := tmp_path / "run").mkdir()
    [reference] = _run(cfg, ref_dir / "optuna.journal", 0, ref_dir)

    step = _spawn_and_kill(cfg, run_dir / "optuna.journal", 0, run_dir, trial=0, min_step=40)
    assert _study(cfg, run_dir / "optuna.journal").trials[0].state.name == "RUNNING"
    [resumed] = _run(cfg, run_dir / "optuna.journal", 0, run_dir)

    assert 40 <= step < 160 and resumed.resumed_from_step == step, (step, resumed.resumed_from_step)
    assert resumed.state == "COMPLETE" and resumed.steps == 160
    # CPU, one thread: bit-identical to the run that was never killed.
    assert resumed.params == reference.params and resumed.value == reference.value
    assert resumed.metrics == reference.metrics
    a = load_file(str(Path(reference.model_dir) / "model.safetensors"))
    b = load_file(str(Path(resumed.model_dir) / "model.safetensors"))
    assert all(a[k].equal(b[k]) for k in a), "best weights differ from the uninterrupted run"
    print(f"\nkilled after checkpoint step {step}; resumed at step {resumed.resumed_from_step}")


def test_dead_workers_trial_is_failed_by_heartbeat_and_rerun_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = _cfg(tmp_path, tiny_model_dir, hpo__n_trials=2, hpo__n_workers=2, hpo__heartbeat_interval=1,
               hpo__heartbeat_grace_period=GRACE, hpo__stale_trial_retries=1)  # fmt: skip
    (work := tmp_path / "run").mkdir()
    storage = work / "optuna.journal"

    # 1. Worker 0 dies in trial 0 and does not come back; worker 1 fails trial 0 (no heartbeat for
    #    longer than the grace period) and re-runs it as trial 1, from trial 0's checkpoint.
    step0 = _spawn_and_kill(cfg, storage, 0, work, trial=0)
    _wait_stale()
    [rerun] = _run(cfg, storage, 1, work)
    study = _study(cfg, storage)
    t0, t1 = study.trials[0], study.trials[1]
    assert (t0.state.name, t1.state.name) == ("FAIL", "COMPLETE")
    assert rerun.number == 1 and t1.params == t0.params and t1.system_attrs["failed_trial"] == 0
    assert rerun.resumed_from_step == step0 and rerun.worker == 1

    # 2. Worker 0 comes back, asks trial 2 and dies again. Worker 1 (its quota done) only fails
    #    trial 2 and re-queues it as trial 3; worker 0 comes back, takes trial 3, and dies in it too.
    step2 = _spawn_and_kill(cfg, storage, 0, work, trial=2)
    _wait_stale()
    assert _run(cfg, storage, 1, work) == []
    _spawn_and_kill(cfg, storage, 0, work, trial=3, min_step=step2 + 20)
    _wait_stale()
    # 3. Trial 3 is a re-run already: failed, not re-queued again (stale_trial_retries=1); worker 0
    #    asks a fresh trial 4 and finishes its quota.
    assert _run(cfg, storage, 1, work) == []
    [fresh] = _run(cfg, storage, 0, work)
    states = {t.number: t.state.name for t in _study(cfg, storage).trials}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "FAIL", 3: "FAIL", 4: "COMPLETE"}, states
    assert fresh.number == 4 and fresh.resumed_from_step == 0
    finished = [t for t in _study(cfg, storage).trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2, "exactly hpo.n_trials finished trials"


def test_rdb_storage_gets_optunas_own_heartbeat(tmp_path: Path, tiny_model_dir: Path) -> None:
    """An RDB URL uses RDBStorage's heartbeat the same way (here a trial asked by a 'worker' that
    never beat, i.e. died at once; the journal case above uses real kills)."""
    cfg_path = _cfg(tmp_path, tiny_model_dir, hpo__n_trials=1, hpo__n_workers=1, hpo__heartbeat_interval=1,
                    hpo__heartbeat_grace_period=2, train__max_steps=6)  # fmt: skip
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, parse_config_dict(json.loads(cfg_path.read_text())).hpo)
    assert isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() == 1
    study = optuna.create_study(study_name="s", storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat"):
        dead = study.ask()
    storage.record_heartbeat(dead._trial_id)
    dead.set_user_attr("worker", 7)
    time.sleep(3.5)
    [rerun] = _run(cfg_path, url, 0, tmp_path)
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=url).trials]
    assert states == ["FAIL", "COMPLETE"] and rerun.number == 1


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cfg_arg, storage_arg, worker_arg, work_arg = sys.argv[1:5]
    _run(Path(cfg_arg), Path(storage_arg), int(worker_arg), Path(work_arg))
