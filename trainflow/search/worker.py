"""One HPO worker: its quota of trials from the shared study, each trained, reported and told.

Each worker asks its own trials from the shared study (so TPE sees every finished trial),
trains, reports each validation pass for the pruner, and tells its result. Trials are owned by
a worker (user attr `worker`) and each worker runs a fixed quota of finished (COMPLETE or
PRUNED) trials, so the total is exactly `hpo.n_trials` with no race between workers.

When a worker dies (kill -9, lost node), two mechanisms recover its trial, and neither counts
it twice:
  1. The same worker comes back (@retry, `resume`): it continues its trial left RUNNING, from
     the trial's latest intact checkpoint (the one metaflow-checkpoint loaded, or the local one
     under `<run dir>/trials/trial-NNNN/checkpoint`, whichever is further).
  2. Heartbeats (`hpo.heartbeat_interval`, trainflow/search/heartbeat.py): a running trial beats
     every interval; any worker that is about to ask a trial first fails the RUNNING trials
     silent for longer than `hpo.heartbeat_grace_period` (FAIL is not a finished state, so no
     quota counts it) and Optuna's RetryHeartbeatStaleTrialCallback re-queues each one once
     (`stale_trial_retries`) as a WAITING trial with the same parameters, which the next `ask`
     takes. The re-run continues from the failed trial's checkpoint with the failed trial's seed.
A worker that comes back refreshes its own trial's heartbeat before failing anybody's, so a
trial whose owner is back is continued (1), not failed (2).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from trainflow.core.config import RunConfig, expand_env
from trainflow.core.errors import JournalCorruptError
from trainflow.core.layout import CHECKPOINT_DIR, trial_dir
from trainflow.data.dataset import SplitData
from trainflow.records.tracking import TrialLogger, lineage_artifact, lineage_ref, trial_run
from trainflow.search import space as search_space
from trainflow.search.heartbeat import beat, heartbeat
from trainflow.search.journal import check_journal
from trainflow.search.optuna_private import retry_history, storage_of, trial_by_id, trial_id
from trainflow.search.study import (
    CURVES_ATTR,
    FINISHED,
    STOPPED_ATTR,
    TrialRecord,
    budget_stop_reason,
    mark_started,
    open_storage,
    open_study,
    stopped_reason,
    suggest,
    trial_records,
    worker_quota,
)
from trainflow.training.hparams import cpu_threads
from trainflow.training.resume import Checkpoint, latest_checkpoint
from trainflow.training.train import Objective, TrainResult, train_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialRole:
    """What a worker's trials are: the search's, or a distillation's students. `name` names their
    W&B runs (`<run>-<name>-<n>`), `model_kind` and `parent_kind` their models' lineage links,
    `objective(trial config)` what they minimise (None: the task's loss), `tracking_dir` where
    their W&B runs are kept (None: the worker's `work_dir`)."""

    name: str = "trial"
    model_kind: str = "trial-model"
    parent_kind: str = "dataset"
    objective: Callable[[RunConfig], Callable[[torch.device], Objective] | None] | None = None
    tracking_dir: Path | None = None


SEARCH = TrialRole()


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
    deploy_cost: DeployCost | None = None,
    role: TrialRole = SEARCH,
) -> list[TrialRecord]:
    """Run this worker's quota of trials; return the records of the trials it ran. The worker asks
    no more trials once the study's budget says the search is over (`hpo.budget`); with
    `hpo.constraints`, `deploy_cost(trial config)` gives each trial's INT8 latency and size.

    SIGTERM or SIGUSR1 (SLURM's warning before preemption or the time limit) makes the running
    trial save a checkpoint and raise TrainingInterrupted; the trial stays RUNNING and the
    next attempt of this worker continues it. `resume_dir` is a checkpoint loaded by the caller
    (metaflow-checkpoint); local checkpoints under `work_dir` are found without it. `role`: the
    search's trials, or a distillation's students (trainflow/search/distill.py)."""
    torch.set_num_threads(cpu_threads(cfg.train.num_threads, cfg.hpo.n_workers))
    with stop_on_signals() as stop_requested, journal_read_errors(storage):
        study = open_study(cfg, open_storage(storage, cfg.hpo), study_name, sampler_seed=worker)
        quota = worker_quota(cfg.hpo.n_trials, cfg.hpo.n_workers, worker)
        ran: list[int] = []
        while True:
            trial = _continue_own_trial(study, worker)
            if trial is None:
                _fail_stale_trials(study)
                mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == worker]
                if sum(t.state in FINISHED for t in mine) >= quota:
                    break
                if (reason := budget_stop_reason(study, cfg)) is not None:
                    if stopped_reason(study) is None:
                        study.set_user_attr(STOPPED_ATTR, reason)
                    log.info("worker %d: no more trials: the search stopped because %s", worker, reason)
                    break
                mark_started(study)  # the time budget counts from the first trial asked
                trial = _ask(study)  # a re-queued (WAITING) trial first, else a new one
                trial.set_user_attr("worker", worker)
                if (origin := _retried_from(trial)) is not None:
                    log.info("worker %d: trial %d re-runs trial %d (failed by the heartbeat)", worker, trial.number,
                             origin)  # fmt: skip
            resume = _latest_checkpoint(cfg, trial, work_dir, resume_dir)
            with heartbeat(study, trial, cfg.hpo.heartbeat_grace_period) as beat_lost:
                stop = (lambda: stop_requested() or beat_lost()) if cfg.hpo.heartbeat_interval else stop_requested
                _run_trial(cfg, study, trial, train, validation, work_dir, group, resume, on_checkpoint, stop,
                           deploy_cost, role)  # fmt: skip
            ran.append(trial.number)
        return [r for r in trial_records(study) if r.number in ran]


@contextmanager
def journal_read_errors(storage: str) -> Iterator[None]:
    """A journal that cannot be read back while the worker runs (another process truncated or
    garbled it: Optuna raises a JSON error from deep inside) becomes one line: the corrupt record's
    offset and the repair command when the file shows one, else what happened and what to do."""
    try:
        yield
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if "://" in storage:
            raise
        path = Path(expand_env(storage))
        check_journal(path)  # raises JournalCorruptError with the offset and `trainflow journal-repair`
        raise JournalCorruptError(
            f"Optuna journal {path} changed under this worker ({type(err).__name__}: {err}): something shortened or"
            " rewrote it while the run was writing it; a retry or `python flows/train_flow.py resume` reads it"
            " afresh (it is intact now)"
        ) from None


def _continue_own_trial(study: optuna.Study, worker: int) -> optuna.Trial | None:
    """This worker's trial left RUNNING by an earlier attempt, claimed with a fresh heartbeat
    before any worker fails stale trials (so a returning owner continues it), or None."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") != worker:
            continue
        beat(study, t)
        if storage_of(study).get_trial(trial_id(t)).state != TrialState.RUNNING:
            continue  # failed as stale just before the claim: its re-queued copy is asked instead
        log.info("worker %d: continuing trial %d left running by an earlier attempt", worker, t.number)
        return trial_by_id(study, trial_id(t))
    return None


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number not in before:
            log.warning("trial %d: no heartbeat for over the grace period (its worker died); failed and re-queued"
                        " as allowed by hpo.stale_trial_retries", t.number)  # fmt: skip


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # ask/tell (not study.optimize) is how foreach workers share a study; we beat ourselves.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        trial = study.ask()
    beat(study, trial)
    return trial


def _retried_from(trial: optuna.Trial) -> int | None:
    history = retry_history(trial)
    return history[0] if history else None


def trial_seed(cfg: RunConfig, trial: optuna.Trial) -> int:
    """A re-queued trial keeps the seed of the trial it re-runs, so it can continue its checkpoint."""
    origin = _retried_from(trial)
    return cfg.seed + (trial.number if origin is None else origin)


def _latest_checkpoint(cfg: RunConfig, trial: optuna.Trial, work_dir: Path, loaded: Path | None) -> Checkpoint | None:
    """The furthest intact checkpoint of this trial, or of the trials it re-runs: the one the
    caller loaded (metaflow-checkpoint, @retry) or a local one under `work_dir` (kept across
    `resume`, which gives tasks new ids and so loads nothing). Only a checkpoint made with this
    trial's hyperparameters and seed qualifies.

    Workaround: metaflow-checkpoint 0.2.14's default load_policy "fresh" loads nothing in a resumed
    run, and "eager" makes a new run load the previous run's final checkpoint; no upstream issue
    was found (https://github.com/outerbounds/metaflow-checkpoint), so the local copy is used."""
    lineage = {trial.number, *retry_history(trial)}
    roots = [loaded, *(trial_dir(work_dir, n) / CHECKPOINT_DIR for n in sorted(lineage))]
    hparams, seed = asdict(suggest(trial, cfg)), trial_seed(cfg, trial)

    params = dict(trial.params)

    def ours(meta: dict[str, Any]) -> bool:
        return (meta.get("trial") in lineage and meta.get("hparams") == hparams and meta.get("seed") == seed
                and meta.get("params", params) == params)  # fmt: skip

    found = latest_checkpoint(roots, accept=ours)
    if found is not None:
        log.info("trial %d: continuing from checkpoint %s (step %d)", trial.number, found.folder, found.step)
    return found


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
    resume_dir: Checkpoint | None,
    on_checkpoint: Any,
    stop_requested: Callable[[], bool],
    deploy_cost: DeployCost | None = None,
    role: TrialRole = SEARCH,
) -> None:
    trial_cfg = search_space.trial_config(trial, cfg)
    hparams = search_space.hyperparams(trial_cfg)
    metric = cfg.hpo.metric
    limited = cfg.hpo.constraints is not None and deploy_cost is not None
    if limited and not _record_deploy_cost(trial, trial_cfg, deploy_cost):  # type: ignore[arg-type]
        # Never trained: it could never be chosen. Pruned with its constraint values recorded,
        # so the sampler learns where the limits are.
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        report_and_prune(trial, metric, step, metrics[metric], hparams.max_steps)

    out_dir = trial_dir(work_dir, trial.number)
    with trial_run(
        tracking=cfg.tracking,
        run_id=f"{group}-{role.name}-{trial.number}",
        group=group,
        name=f"{role.name}-{trial.number}",
        config={
            "trial": trial.number,
            "params": dict(trial.params),
            "hparams": asdict(hparams),
            "run_config": trial_cfg.public_dump(),
        },  # fmt: skip
        directory=role.tracking_dir or work_dir,
        points=trial.user_attrs.get(CURVES_ATTR),  # what an earlier attempt recorded
    ) as tlog:

        def checkpointed(folder: Path) -> None:
            # The curve so far is stored with each checkpoint, so a resumed attempt keeps it.
            trial.set_user_attr(CURVES_ATTR, tlog.points)
            if on_checkpoint is not None:
                on_checkpoint(folder)

        try:
            result = train_model(
                cfg=trial_cfg,
                hparams=hparams,
                train=train,
                validation=validation,
                out_dir=out_dir,
                seed=trial_seed(cfg, trial),
                resume_dir=resume_dir,
                on_checkpoint=checkpointed,
                on_eval=on_eval,
                log_values=tlog.log,
                checkpoint_tags={"trial": trial.number, "params": dict(trial.params)},
                stop_requested=stop_requested,
                objective=None if role.objective is None else role.objective(trial_cfg),
            )
        except optuna.TrialPruned as pruned:
            log.info("%s", pruned)
            trial.set_user_attr(CURVES_ATTR, tlog.points)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            tlog.summary({"state": "PRUNED"})
            return
        _record_complete(cfg, study, trial, result, tlog, group, role)


# The deployed cost of a trial's architecture: {"latency_ms": ..., "size_mb": ...}
DeployCost = Callable[[RunConfig], dict[str, float]]


def _record_deploy_cost(trial: optuna.Trial, trial_cfg: RunConfig, deploy_cost: DeployCost) -> bool:
    """Record the trial's INT8 latency and size (measured once per architecture by `deploy_cost`)
    and whether they are within `hpo.constraints`, as user attrs, and as Optuna's constraint
    values (how far over each limit; <= 0 is within), which its samplers read. Returns whether
    they are within."""
    limits = trial_cfg.hpo.constraints
    assert limits is not None
    cost = deploy_cost(trial_cfg)
    over = {name: cost[name] - limit if limit is not None else -1e9  # no limit: always within
            for name, limit in (("latency_ms", limits.max_latency_ms), ("size_mb", limits.max_size_mb))}  # fmt: skip
    feasible = all(v <= 0 for v in over.values())
    trial.set_user_attr("latency_ms", cost["latency_ms"])
    trial.set_user_attr("size_mb", cost["size_mb"])
    trial.set_user_attr("feasible", feasible)
    for name, value in over.items():
        trial.set_constraint(name, value)
    log.info("trial %d: INT8 %.2f ms, %.1f MB: %s", trial.number, cost["latency_ms"], cost["size_mb"],
             "within hpo.constraints" if feasible else "over hpo.constraints: not trained")  # fmt: skip
    return feasible


def _record_complete(
    cfg: RunConfig,
    study: optuna.Study,
    trial: optuna.Trial,
    result: TrainResult,
    tlog: TrialLogger,
    group: str,
    role: TrialRole = SEARCH,
) -> None:
    """Store a finished trial's results as user attrs, tell the study, log its model artifact."""
    trial.set_user_attr("metrics", result.metrics)
    trial.set_user_attr("model_dir", result.model_dir)
    trial.set_user_attr("steps", result.steps_run + result.resumed_from_step)
    trial.set_user_attr("resumed_from_step", result.resumed_from_step)
    trial.set_user_attr("best_step", result.best_step)
    trial.set_user_attr(CURVES_ATTR, tlog.points)
    study.tell(trial, result.metrics[cfg.hpo.metric])
    tlog.log_artifact(
        lineage_artifact(
            model_name=cfg.name,
            kind=role.model_kind,
            run_key=group,
            trial=trial.number,
            path=result.model_dir,
            parents=(lineage_ref(cfg.name, role.parent_kind, group),),
            metadata={"trial": trial.number, "params": trial.params, "metrics": result.metrics},
        )
    )
    tlog.summary({"state": "COMPLETE", **{f"best/{k}": v for k, v in result.metrics.items()}})


def report_and_prune(trial: optuna.Trial, metric: str, step: int, value: float, max_steps: int) -> None:
    """Report a validation value; raise TrialPruned if the pruner says so. At the last step the
    trial is done and completes: pruning it there would only discard finished work (the median
    pruner would otherwise prune every below-median trial at its end)."""
    trial.report(value, step)
    if step < max_steps and trial.should_prune():
        raise optuna.TrialPruned(f"trial {trial.number} pruned at step {step} ({metric}={value:.4f})")
