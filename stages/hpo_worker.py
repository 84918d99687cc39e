"""Step `train` (one foreach task): its HPO workers ask trials from the shared study, train,
report and tell. One worker per task by default; with `hpo.workers_per_gpu` > 1 the task is a
GPU slot whose workers train at once on its GPU (trainflow/training/packing.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trainflow.convert.deploy_cost import measure_deploy_cost
from trainflow.core.config import RunConfig
from trainflow.core.layout import deploy_cost_dir
from trainflow.data.context import RunContext
from trainflow.data.dataset import load_split
from trainflow.search.study import TrialRecord, open_study, trial_records
from trainflow.search.worker import run_worker
from trainflow.training.packing import all_gpu_ids, assign_gpu, pin_gpu, run_packed, slots


def task_slots(cfg: RunConfig) -> list[int]:
    """The train step's foreach values: one per GPU slot (one per worker when unpacked)."""
    return list(range(len(slots(cfg.hpo.n_workers, cfg.hpo.workers_per_gpu))))


def run_trials(
    *,
    cfg: RunConfig,
    ctx: RunContext,
    worker: int,
    resume_dir: Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> list[TrialRecord]:
    """Run slot `worker`'s workers and their quota of trials on the run's train and validation
    splits; the records of the trials they ran.

    Unpacked (`workers_per_gpu` 1) the worker runs in this process: `resume_dir` is a checkpoint
    the caller loaded (metaflow-checkpoint on @retry) and `on_checkpoint(folder)` runs after each
    checkpoint is complete on disk. Packed, each worker is a process of its own and continues from
    its local checkpoints. Either way the task's GPU is pinned first (`trainflow.training.packing`)."""
    gpu = None if cfg.train.device == "cpu" else assign_gpu(worker, all_gpu_ids(), cfg.compute.gpus)
    workers = slots(cfg.hpo.n_workers, cfg.hpo.workers_per_gpu)[worker]
    if cfg.hpo.workers_per_gpu > 1:
        run_packed(target=run_one_worker, workers=workers, gpu=gpu, cfg=cfg, ctx=ctx)
        study = open_study(cfg, ctx.storage, ctx.study_name)
        return [r for r in trial_records(study) if r.worker in workers]
    pin_gpu(gpu)  # before CUDA starts in this process
    return run_one_worker(cfg=cfg, ctx=ctx, worker=workers[0], resume_dir=resume_dir, on_checkpoint=on_checkpoint)


def run_one_worker(
    *,
    cfg: RunConfig,
    ctx: RunContext,
    worker: int,
    resume_dir: Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> list[TrialRecord]:
    """HPO worker `worker`'s quota of trials on the run's train and validation splits, in this
    process (a packed worker runs this in a process of its own). With `hpo.constraints` each
    trial's INT8 latency and size come from its architecture, measured once on this machine
    (cached under the run root for later trials and runs)."""
    deploy_cost = None
    if cfg.hpo.constraints is not None:
        texts = load_split(ctx.snapshot, "calibration").inputs

        def deploy_cost(trial_cfg: RunConfig) -> dict[str, float]:
            return measure_deploy_cost(trial_cfg, texts=texts, cache_dir=deploy_cost_dir(cfg.publish.run_root))

    return run_worker(
        cfg=cfg,
        storage=ctx.storage,
        study_name=ctx.study_name,
        worker=worker,
        train=load_split(ctx.snapshot, "train"),
        validation=load_split(ctx.snapshot, "validation"),
        work_dir=ctx.path,
        group=ctx.run_key,
        resume_dir=resume_dir,
        on_checkpoint=on_checkpoint,
        deploy_cost=deploy_cost,
    )
