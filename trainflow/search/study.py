"""The Optuna study that foreach workers share: its storage, sampler and pruner, the search space,
the trials' records and the best trial. Torch-free: the steps that only read a study (join, cards,
the CLI) load it in a fraction of a second; the worker loop is trainflow/search/worker.py.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from trainflow.core.config import HpoConfig, RunConfig, expand_env
from trainflow.core.errors import ConfigError, SearchError
from trainflow.search import space as search_space
from trainflow.search.heartbeat import HeartbeatJournalStorage
from trainflow.search.journal import journal_storage
from trainflow.training.hparams import Hyperparams

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
    best_step: int | None = None  # the step whose model was kept (its best validation pass)
    latency_ms: float | None = None  # the deployed INT8 model's p50 (hpo.constraints), per architecture
    size_mb: float | None = None
    feasible: bool | None = None  # within hpo.constraints; None when none are set

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_storage(spec: str | optuna.storages.BaseStorage, hpo: HpoConfig | None = None) -> optuna.storages.BaseStorage:
    """A journal file path, or an RDB URL (contains '://'); with heartbeats when `hpo` enables them."""
    if isinstance(spec, optuna.storages.BaseStorage):
        return spec
    try:
        spec = expand_env(spec)  # `${VAR}`: how a password reaches an RDB URL without entering the config
    except KeyError as err:
        raise ConfigError("hpo.storage", [str(err.args[0])]) from None
    if "://" not in spec:
        Path(spec).parent.mkdir(parents=True, exist_ok=True)
    if hpo is None or hpo.heartbeat_interval == 0:
        return optuna.storages.RDBStorage(spec) if "://" in spec else journal_storage(Path(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=hpo.stale_trial_retries)
        if "://" in spec:
            return optuna.storages.RDBStorage(
                spec,
                heartbeat_interval=hpo.heartbeat_interval,
                grace_period=hpo.heartbeat_grace_period,
                heartbeat_stale_trial_callback=retry,
            )
    return HeartbeatJournalStorage(
        Path(spec),
        heartbeat_interval=hpo.heartbeat_interval,
        grace_period=hpo.heartbeat_grace_period,
        stale_trial_callback=retry,
    )


def make_pruner(cfg: RunConfig) -> optuna.pruners.BasePruner:
    """The configured pruner over evaluation steps. It is not stored in the study: every worker
    builds the same one. Median and percentile compare a trial with the others at the same step;
    successive halving (asynchronous: a trial is judged against whoever reached its rung, no waiting
    for a full rung) and Hyperband (brackets fixed by trial number, so every worker agrees) read
    the shared study too."""
    p = cfg.hpo.pruner_config
    warmup = cfg.train.eval_every if p.warmup_steps is None else p.warmup_steps
    min_resource = p.min_resource or cfg.train.eval_every
    if p.type == "none":
        return optuna.pruners.NopPruner()
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=warmup)
    if p.type == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=warmup)
    if p.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=p.reduction_factor,
                                                      min_early_stopping_rate=p.min_early_stopping_rate)  # fmt: skip
    return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=cfg.train.max_steps,
                                          reduction_factor=p.reduction_factor)  # fmt: skip


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, for workers that ask and tell: once the grid is exhausted Optuna's
    calls `study.stop()`, which only `study.optimize` accepts; here the budget check ends the search
    instead (`budget_stop_reason`: every grid point tried)."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
        return None


def make_sampler(cfg: RunConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded. TPE and GP learn which trials broke the deployment limits
    (`hpo.constraints`) from the constraint values the worker sets on each trial
    (`Trial.set_constraint`)."""
    name = cfg.hpo.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=cfg.hpo.n_workers)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.hpo.n_workers)
        if name == "grid":
            return _AskTellGridSampler(search_space.grid(cfg), seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.hpo.n_workers)


def open_study(
    cfg: RunConfig, storage: str | optuna.storages.BaseStorage, study_name: str, sampler_seed: int = 0
) -> optuna.Study:
    """Create the study, or load it if it exists (safe to call from every worker)."""
    return optuna.create_study(
        study_name=study_name,
        storage=open_storage(storage, cfg.hpo),
        direction=cfg.hpo.direction,
        sampler=make_sampler(cfg, cfg.seed + sampler_seed),
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )


def suggest(trial: optuna.Trial, cfg: RunConfig) -> Hyperparams:
    """The optimizer's values of a trial (the search space is trainflow/search/space.py); a
    continued trial gets its stored values back."""
    return search_space.hyperparams(search_space.trial_config(trial, cfg))


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
                best_step=t.user_attrs.get("best_step"),
                latency_ms=t.user_attrs.get("latency_ms"),
                size_mb=t.user_attrs.get("size_mb"),
                feasible=t.user_attrs.get("feasible"),
            )
        )
    return out


def best_trial(study: optuna.Study) -> TrialRecord:
    """The best COMPLETE trial by the study's direction, among the trials within the deployment
    limits when `hpo.constraints` marked any (trainflow/search/worker.py).

    Raises:
        SearchError: no trial completed (each one's state is named), or none is within the limits
            (the fastest trial's figures are named).
    """
    records = trial_records(study)
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    feasible = [r for r in complete if r.feasible is not False]
    over = [r for r in records if r.feasible is False and r.latency_ms is not None]
    if not feasible and over:  # over the limits: trials are not trained (trainflow/search/worker.py)
        fastest = min(over, key=lambda r: (r.latency_ms, r.size_mb or float("inf"), r.number))
        raise SearchError(
            f"no trial of study {study.study_name} is within hpo.constraints ({len(over)} over them): the fastest,"
            f" trial {fastest.number}, runs its INT8 model in {fastest.latency_ms:.2f} ms and takes"
            f" {fastest.size_mb:.1f} MB; raise hpo.constraints or search smaller models (model.base, model.max_length)"
        )
    if not feasible:
        states = ", ".join(f"trial {r.number} {r.state}" for r in records) or "no trials"
        raise SearchError(
            f"no trial of study {study.study_name} completed ({states}): the train step's log says why each"
            " stopped; a pruned search needs more hpo.n_trials or hpo.pruner: none, a failed one a fix and `resume`"
        )
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(feasible, key=lambda r: (sign * float(r.value), -r.number))  # type: ignore[arg-type]


def pareto_front(records: list[TrialRecord], direction: str) -> list[TrialRecord]:
    """The complete trials with a measured latency that no other beats on both the metric and the
    INT8 latency (ties on both keep each), fastest first."""
    sign = 1 if direction == "maximize" else -1
    # (score, latency, record): a higher score is better whatever the direction
    done = [(sign * r.value, r.latency_ms, r) for r in records
            if r.state == "COMPLETE" and r.value is not None and r.latency_ms is not None]  # fmt: skip

    def dominated(score: float, latency: float) -> bool:
        return any(s >= score and lat <= latency and (s > score or lat < latency) for s, lat, _ in done)

    front = [r for score, latency, r in done if not dominated(score, latency)]
    return sorted(front, key=lambda r: (r.latency_ms, r.number))  # type: ignore[arg-type, return-value]


# --- the study's budget ------------------------------------------------------------------------

STARTED_ATTR = "search_started_at"  # study user attr: when the search began (epoch seconds)
STOPPED_ATTR = "search_stopped"  # study user attr: why no more trials were asked (the first worker to see it)


def mark_started(study: optuna.Study) -> None:
    if STARTED_ATTR not in study.user_attrs:
        study.set_user_attr(STARTED_ATTR, time.time())


def budget_stop_reason(study: optuna.Study, cfg: RunConfig, now: float | None = None) -> str | None:
    """Why the search should ask no more trials (`hpo.budget`), or None. Running trials finish."""
    budget, now = cfg.hpo.budget, time.time() if now is None else now
    if budget.timeout_minutes is not None:
        started = float(study.user_attrs.get(STARTED_ATTR, now))
        if now - started > budget.timeout_minutes * 60:
            return f"its time budget of {budget.timeout_minutes:g} min (hpo.budget.timeout_minutes) was spent"
    if cfg.hpo.sampler == "grid":
        asked = study.get_trials(deepcopy=False, states=(*FINISHED, optuna.trial.TrialState.RUNNING))
        if len(asked) >= (size := search_space.grid_size(cfg)):
            return f"every one of the grid's {size} points was tried (hpo.sampler: grid)"
    done = sorted((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                   if t.value is not None and t.user_attrs.get("feasible", True)),
                  key=lambda t: ((t.datetime_complete or t.datetime_start).timestamp(), t.number))  # type: ignore[union-attr]  # fmt: skip
    if not done:
        return None
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    if budget.target is not None:
        hit = next((t for t in done if sign * float(t.value) >= sign * budget.target), None)  # type: ignore[arg-type]
        if hit is not None:
            return f"trial {hit.number} reached the target {cfg.hpo.metric} {budget.target:g} (hpo.budget.target)"
    if budget.patience is not None:
        best, since = None, 0
        for t in done:
            if best is None or sign * float(t.value) > sign * best:  # type: ignore[arg-type]
                best, since = float(t.value), 0  # type: ignore[arg-type]
            else:
                since += 1
        if since >= budget.patience:
            return f"{since} completed trials in a row did not improve on {best:.4f} (hpo.budget.patience)"
    return None


def stopped_reason(study: optuna.Study) -> str | None:
    return study.user_attrs.get(STOPPED_ATTR)
