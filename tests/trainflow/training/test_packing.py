"""Trial packing on CPU: worker-to-GPU assignment, packed workers sharing one study, and a packed
slot killed and run again (issue 14). The GPU measurements are benchmarks (gpu_packing.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from stages.hpo_worker import run_trials, task_slots
from stages.prepare import prepare_run
from tests.tiny import ROOT, tiny_config
from trainflow.core.config import parse_config_dict
from trainflow.core.errors import WorkerProcessError
from trainflow.core.layout import trial_dir
from trainflow.search.study import open_study
from trainflow.training.packing import assign_gpu, run_packed, slots, visible_gpus
from trainflow.training.resume import read_checkpoint_meta


def test_workers_are_grouped_into_gpu_slots_and_pinned() -> None:
    assert (
        slots(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
        and slots(5, 2) == [[0, 1], [2, 3], [4]]
        and slots(3, 1) == [[0], [1], [2]]
    )
    # A local box whose tasks see all 4 GPUs: slot s on GPU s mod 4.
    assert [assign_gpu(s, ["0", "1", "2", "3"], declared=1) for s in range(6)] == ["0", "1", "2", "3", "0", "1"]
    # SLURM/Kubernetes gave the task its own GPU(s): use them, whatever the slot number.
    assert assign_gpu(5, ["3"], declared=1) == "3" and assign_gpu(2, ["4", "5"], declared=2) == "4"
    assert assign_gpu(0, [], declared=0) is None
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"] and visible_gpus({}) is None


def _cfg(tmp: Path, model_dir: Path, **over):
    raw = tiny_config(tmp, model_dir, train__device="cpu", train__num_threads=1, hpo__n_trials=2, hpo__n_workers=2,
                      hpo__workers_per_gpu=2, hpo__pruner="none", **over)  # fmt: skip
    return raw, parse_config_dict(raw)


def test_packed_workers_share_one_study(tmp_path: Path, tiny_model_dir: Path) -> None:
    _, cfg = _cfg(tmp_path, tiny_model_dir)
    assert task_slots(cfg) == [0], "two workers, one GPU slot: one task"
    ctx = prepare_run(cfg=cfg, run_key="p1")
    records = run_trials(cfg=cfg, ctx=ctx, worker=0)
    assert sorted(r.worker for r in records) == [0, 1] and {r.state for r in records} == {"COMPLETE"}
    study = open_study(cfg, ctx.storage, ctx.study_name)
    assert len(study.trials) == 2 and len({t.number for t in study.trials}) == 2


KILLED = """
import json, sys
from pathlib import Path
from stages.hpo_worker import run_trials
from stages.prepare import prepare_run
from trainflow.core.config import parse_config_dict
cfg = parse_config_dict(json.loads(Path(sys.argv[1]).read_text()))
ctx = prepare_run(cfg=cfg, run_key="p2")
run_trials(cfg=cfg, ctx=ctx, worker=0)
"""


@pytest.mark.slow
def test_a_killed_packed_slot_continues_each_trial_from_its_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    raw, cfg = _cfg(tmp_path, tiny_model_dir, train__max_steps=400, train__checkpoint_every=20, train__eval_every=200)
    (tmp_path / "cfg.json").write_text(json.dumps(raw))
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path / "cfg.json")], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)  # fmt: skip
    work = tmp_path / "runs" / "tiny" / "p2"
    deadline = time.time() + 240
    while not all(read_checkpoint_meta(trial_dir(work, n) / "checkpoint") for n in (0, 1)):
        assert proc.poll() is None and time.time() < deadline, "both packed workers must checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the slot task and both worker processes
    proc.wait()
    # The retried task: the same run folder and study (a fresh snapshot of the same data stands in
    # for the killed run's, which a Metaflow retry would pass as an artifact).
    ctx = replace(prepare_run(cfg=cfg, run_key="p2-retry"), run_key="p2", run_dir=str(work),
                  storage=str(work / "optuna.journal"), study_name="tiny-p2")  # fmt: skip
    records = run_trials(cfg=cfg, ctx=ctx, worker=0)
    assert sorted(r.worker for r in records) == [0, 1] and {r.state for r in records} == {"COMPLETE"}
    assert all(r.resumed_from_step and r.resumed_from_step >= 20 for r in records), records
    assert len(open_study(cfg, ctx.storage, ctx.study_name).trials) == 2, "no trial asked twice"


def test_the_shipped_gpu_config_validates_and_packs_its_workers() -> None:
    """config/gpu.yaml (what a one-GPU user copies): it validates on its own (extends: base.yaml),
    asks for a GPU, packs its 8 workers 4 to a slot (2 train tasks) and searches INT8 in parallel."""
    from tests.tiny import ROOT
    from trainflow.core.config import load_config
    from trainflow.training.packing import slots

    cfg = load_config(ROOT / "config" / "gpu.yaml")
    assert (cfg.train.device, cfg.compute.gpus) == ("cuda", 1)
    assert slots(cfg.hpo.n_workers, cfg.hpo.workers_per_gpu) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert cfg.quantize.parallel == 4 and cfg.hpo.n_trials == 8


def _exit_with(code: int, worker: int) -> None:
    raise SystemExit(code if worker == 1 else 0)


def test_a_failed_packed_worker_is_a_one_line_error_naming_it_and_the_fix() -> None:
    with pytest.raises(WorkerProcessError) as err:
        run_packed(target=_exit_with, workers=[0, 1], gpu=None, code=3)
    message = str(err.value)
    assert "\n" not in message and "worker-1 (exit code 3)" in message and "worker-0" not in message
    assert "resume" in message
