"""Step `refit` (with `hpo.refit`): the best trial's configuration trained again on train +
validation (trainflow/search/refit.py), checkpointed and resumable like a trial, on the trials'
backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trainflow.core.config import RunConfig
from trainflow.core.faults import fault_window
from trainflow.data.context import RunContext
from trainflow.data.dataset import load_split
from trainflow.records.tracking import lineage_ref, log_lineage_link
from trainflow.search.refit import RefitResult, refit_best
from trainflow.search.study import TrialRecord
from trainflow.training.packing import all_gpu_ids, assign_gpu, pin_gpu


def refit_model(
    *,
    cfg: RunConfig,
    ctx: RunContext,
    best: TrialRecord,
    resume_dir: Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> RefitResult:
    """Refit `best`'s configuration on train + validation; `resume_dir` is a checkpoint the
    caller loaded (metaflow-checkpoint on @retry), `on_checkpoint(folder)` runs after each one."""
    pin_gpu(None if cfg.train.device == "cpu" else assign_gpu(0, all_gpu_ids(), cfg.compute.gpus))
    result = refit_best(cfg=cfg, best=best, train=load_split(ctx.snapshot, "train"),
                        validation=load_split(ctx.snapshot, "validation"), work_dir=ctx.path, resume_dir=resume_dir,
                        on_checkpoint=on_checkpoint)  # fmt: skip
    log_lineage_link(cfg=cfg, run_key=ctx.run_key, directory=ctx.path, job_type="refit", kind="refit-model",
                     path=result.model_dir, parents=(lineage_ref(cfg.name, "best-model", ctx.run_key),),
                     trial=best.number, steps=result.steps)  # fmt: skip
    fault_window("refit")
    return result
