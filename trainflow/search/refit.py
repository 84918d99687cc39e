"""Refit (`hpo.refit`): the best trial's configuration trained again on train + validation.

The search spends the validation split on choosing; once the choice is made, those rows can teach
the model too. The refit trains the best trial's configuration (its searched fields set, the rest
from the config) on the train and validation splits together, with the best trial's seed, for the
number of steps that produced the best trial's model (its best validation pass), so the schedule
is the one that was measured. The model of the last step is kept: the validation split is part of
its training data, so its validation figures are in-sample and recorded as such; the test split
stays untouched and the export, parity and INT8 gates judge the refitted model on it.

Like a trial, it checkpoints to `<run dir>/refit/checkpoint/` and continues from the furthest intact
checkpoint made for the same trial, parameters and seed (after @retry, a kill -9 and `resume`, or
SIGTERM / SIGUSR1 before preemption).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainflow.core.config import RunConfig
from trainflow.core.layout import CHECKPOINT_DIR, REFIT_DIR
from trainflow.data.dataset import SplitData
from trainflow.search import space as search_space
from trainflow.search.study import TrialRecord
from trainflow.training.resume import Checkpoint, latest_checkpoint

log = logging.getLogger(__name__)


@dataclass
class RefitResult:
    """The refitted model and how it was made (recorded in metadata.json beside the best trial)."""

    trial: int  # the best trial whose configuration was refitted
    model_dir: str
    steps: int
    train_rows: int
    seed: int
    resumed_from_step: int
    seconds: float
    in_sample_metrics: dict[str, float] = field(default_factory=dict)  # on validation, which it trained on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def refit_config(cfg: RunConfig, best: TrialRecord) -> RunConfig:
    """The best trial's configuration for the refit: its searched fields, its step count."""
    trial_cfg = search_space.apply(cfg, best.params)
    steps = best.best_step or best.steps or trial_cfg.train.max_steps
    train = trial_cfg.train.model_copy(update={"max_steps": int(steps), "eval_every": min(trial_cfg.train.eval_every,
                                                                                        int(steps))})  # fmt: skip
    return trial_cfg.model_copy(update={"train": train})


def _joined(train: SplitData, validation: SplitData) -> SplitData:
    return train + validation


def refit_best(
    *,
    cfg: RunConfig,
    best: TrialRecord,
    train: SplitData,
    validation: SplitData,
    work_dir: Path,
    resume_dir: Path | None = None,
    on_checkpoint: Any = None,
) -> RefitResult:
    """Train `best`'s configuration on `train` + `validation` (module docstring).

    Raises:
        TrainingInterrupted: a stop was requested (SIGTERM / SIGUSR1); a checkpoint was saved.
        ModelLoadError, TrainingResourceError: as a trial would.
    """
    from trainflow.search.worker import stop_on_signals
    from trainflow.training.train import train_model

    refit_cfg = refit_config(cfg, best)
    hparams = search_space.hyperparams(refit_cfg)
    seed = cfg.seed + best.number
    out_dir = Path(work_dir) / REFIT_DIR
    tags = {"refit": best.number, "params": dict(best.params), "seed": seed, "hparams": asdict(hparams)}

    def ours(meta: dict[str, Any]) -> bool:
        return all(meta.get(k) == v for k, v in tags.items())

    found: Checkpoint | None = latest_checkpoint([resume_dir, out_dir / CHECKPOINT_DIR], accept=ours)
    if found is not None:
        log.info("refit: continuing from checkpoint %s (step %d)", found.folder, found.step)
    data = _joined(train, validation)
    log.info("refit: trial %d's configuration on train + validation (%d rows) for %d steps", best.number, len(data),
             hparams.max_steps)  # fmt: skip
    t0 = time.perf_counter()
    with stop_on_signals() as stop_requested:
        result = train_model(
            cfg=refit_cfg,
            hparams=hparams,
            train=data,
            validation=validation,
            out_dir=out_dir,
            seed=seed,
            resume_dir=found,
            on_checkpoint=on_checkpoint,
            checkpoint_tags={"refit": best.number, "params": dict(best.params)},
            stop_requested=stop_requested,
            keep="last",
        )
    return RefitResult(
        trial=best.number,
        model_dir=result.model_dir,
        steps=result.steps_run + result.resumed_from_step,
        train_rows=len(data),
        seed=seed,
        resumed_from_step=result.resumed_from_step,
        seconds=time.perf_counter() - t0,
        in_sample_metrics=result.metrics,
    )
