"""Step `train` (one foreach worker): ask trials from the shared study, train, report, tell."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trainflow.config import RunConfig
from trainflow.context import RunContext
from trainflow.data import load_split
from trainflow.hpo import TrialRecord, run_worker


def run_trials(
    *,
    cfg: RunConfig,
    ctx: RunContext,
    worker: int,
    resume_dir: Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> list[TrialRecord]:
    """Run worker `worker`'s quota of trials on the run's train and validation splits.

    `resume_dir` is a checkpoint the caller loaded (metaflow-checkpoint on @retry); the
    worker's local checkpoints under the run folder are found without it. `on_checkpoint(folder)`
    runs after each checkpoint is complete on disk."""
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
    )
