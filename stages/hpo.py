"""Optuna search across foreach workers sharing one persistent study.

Each worker asks its own trials from the shared study (so TPE sees every finished trial),
trains, reports each validation pass for the pruner, and tells its result. Trials are owned by
a worker (user attr `worker`) and each worker runs a fixed quota, so the total is exactly
`hpo.n_trials` with no race between workers. A trial left RUNNING by a crashed attempt of the
same worker is continued (from its checkpoint when one was loaded), never asked twice.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from stages.config import RunConfig
from stages.data import SplitData
from stages.tracking import lineage_artifact, lineage_ref, trial_run
from stages.train import Hyperparams, cpu_threads, read_checkpoint_meta, train_model

log = logging.getLogger(__name__)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# Trial user attr: the trial's logged values per step ({"step", "train/loss", "val/<metric>", ...}).
CURVES_ATTR = "curves"


@dataclass
class TrialRecord:
    number: int
    state: str
    worker: int | None
    params: dict[str, Any]
    value: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    model_dir: str | None = None
    duration_s: float | None = None
    steps: int | None = None
    resumed_from_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_storage(spec: str) -> optuna.storages.BaseStorage | str:
    """An RDB URL (contains '://') is passed through; anything else is a journal file path."""
    if "://" in spec:
        return spec
    path = Path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def make_pruner(cfg: RunConfig) -> optuna.pruners.BasePruner:
    # The pruner is not stored in the study: every worker must build the same one.
    if cfg.hpo.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=cfg.train.eval_every)


def open_study(cfg: RunConfig, storage: str, study_name: str, sampler_seed: int = 0) -> optuna.Study:
    """Create the study, or load it if it exists (safe to call from every worker)."""
    return optuna.create_study(
        study_name=study_name,
        storage=open_storage(storage),
        direction=cfg.hpo.direction,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed + sampler_seed, n_startup_trials=cfg.hpo.n_workers),
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )


def suggest(trial: optuna.Trial, cfg: RunConfig) -> Hyperparams:
    """The search space, declared inline; a continued trial gets its stored values back."""
    space = cfg.hpo.search_space
    return Hyperparams(
        learning_rate=trial.suggest_float("learning_rate", *space.learning_rate, log=True),
        weight_decay=trial.suggest_float("weight_decay", *space.weight_decay),
        warmup_ratio=trial.suggest_float("warmup_ratio", *space.warmup_ratio),
        batch_size=cfg.train.batch_size,
        max_steps=cfg.train.max_steps,
    )


def worker_quota(n_trials: int, n_workers: int, worker: int) -> int:
    return n_trials // n_workers + (1 if worker < n_trials % n_workers else 0)


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    out = []
    for t in study.get_trials(deepcopy=False):
        duration = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        out.append(
            TrialRecord(
                number=t.number,
                state=t.state.name,
                worker=t.user_attrs.get("worker"),
                params=dict(t.params),
                value=t.value,
                metrics=t.user_attrs.get("metrics", {}),
                model_dir=t.user_attrs.get("model_dir"),
                duration_s=duration,
                steps=t.user_attrs.get("steps"),
                resumed_from_step=t.user_attrs.get("resumed_from_step"),
            )
        )
    return out


def run_worker(
    *,
    cfg: RunConfig,
    storage: str,
    study_name: str,
    worker: int,
    train: SplitData,
    validation: SplitData,
    work_dir: Path,
    group: str,
    resume_dir: Path | None = None,
    on_checkpoint: Any = None,
) -> list[TrialRecord]:
    """Run this worker's quota of trials; return the records of the trials it ran.

    SIGTERM or SIGUSR1 (SLURM's warning before preemption or the time limit) makes the running
    trial save a checkpoint and raise TrainingInterrupted; the trial stays RUNNING and the
    next attempt of this worker continues it."""
    torch.set_num_threads(cpu_threads(cfg.train.num_threads, cfg.hpo.n_workers))
    with stop_on_signals() as stop_requested:
        study = open_study(cfg, storage, study_name, sampler_seed=worker)
        quota = worker_quota(cfg.hpo.n_trials, cfg.hpo.n_workers, worker)
        resume_meta = read_checkpoint_meta(resume_dir)
        ran: list[int] = []
        while True:
            mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == worker]
            running = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING]
            if running:
                trial = optuna.Trial(study, running[0]._trial_id)
                log.info("worker %d: continuing trial %d left running by an earlier attempt", worker, trial.number)
            elif sum(t.state in FINISHED for t in mine) >= quota:
                break
            else:
                trial = study.ask()
                trial.set_user_attr("worker", worker)
            resume = resume_dir if resume_meta is not None and resume_meta.get("trial") == trial.number else None
            _run_trial(cfg, study, trial, train, validation, work_dir, group, resume, on_checkpoint, stop_requested)
            ran.append(trial.number)
        return [r for r in trial_records(study) if r.number in ran]


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> Iterator[Callable[[], bool]]:
    """Yield a `stop_requested()` that turns true once one of `signals` arrives."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop.is_set
        return

    def request_stop(signum: int, _frame: object) -> None:
        log.warning("received %s: checkpointing and stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        yield stop.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_trial(
    cfg: RunConfig,
    study: optuna.Study,
    trial: optuna.Trial,
    train: SplitData,
    validation: SplitData,
    work_dir: Path,
    group: str,
    resume_dir: Path | None,
    on_checkpoint: Any,
    stop_requested: Callable[[], bool],
) -> None:
    hparams = suggest(trial, cfg)
    metric = cfg.hpo.metric

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        trial.report(metrics[metric], step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"trial {trial.number} pruned at step {step} ({metric}={metrics[metric]:.4f})")

    out_dir = work_dir / "trials" / f"trial-{trial.number:04d}"
    with trial_run(
        tracking=cfg.tracking,
        run_id=f"{group}-trial-{trial.number}",
        group=group,
        name=f"trial-{trial.number}",
        config={"trial": trial.number, "hparams": asdict(hparams), "run_config": cfg.model_dump(mode="json")},
        directory=work_dir,
        points=trial.user_attrs.get(CURVES_ATTR),  # what an earlier attempt recorded
    ) as tlog:

        def checkpointed(folder: Path) -> None:
            # The curve so far is stored with each checkpoint, so a resumed attempt keeps it.
            trial.set_user_attr(CURVES_ATTR, tlog.points)
            if on_checkpoint is not None:
                on_checkpoint(folder)

        try:
            result = train_model(
                cfg=cfg,
                hparams=hparams,
                train=train,
                validation=validation,
                out_dir=out_dir,
                seed=cfg.seed + trial.number,
                resume_dir=resume_dir,
                on_checkpoint=checkpointed,
                on_eval=on_eval,
                log_values=tlog.log,
                checkpoint_tags={"trial": trial.number},
                stop_requested=stop_requested,
            )
        except optuna.TrialPruned as pruned:
            log.info("%s", pruned)
            trial.set_user_attr(CURVES_ATTR, tlog.points)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            tlog.summary({"state": "PRUNED"})
            return
        trial.set_user_attr("metrics", result.metrics)
        trial.set_user_attr("model_dir", result.model_dir)
        trial.set_user_attr("steps", result.steps_run + result.resumed_from_step)
        trial.set_user_attr("resumed_from_step", result.resumed_from_step)
        trial.set_user_attr(CURVES_ATTR, tlog.points)
        study.tell(trial, result.metrics[metric])
        tlog.log_artifact(
            lineage_artifact(
                model_name=cfg.name,
                kind="trial-model",
                run_key=group,
                trial=trial.number,
                path=result.model_dir,
                parents=(lineage_ref(cfg.name, "dataset", group),),
                metadata={"trial": trial.number, "params": trial.params, "metrics": result.metrics},
            )
        )
        tlog.summary({"state": "COMPLETE", **{f"best/{k}": v for k, v in result.metrics.items()}})


def best_trial(study: optuna.Study) -> TrialRecord:
    """The best COMPLETE trial by the study's direction. Raises ValueError if none completed."""
    best = study.best_trial  # ValueError when no trial is complete
    return next(r for r in trial_records(study) if r.number == best.number)
