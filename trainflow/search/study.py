"""The Optuna study that foreach workers share: its storage, sampler and pruner, the search space,
the trials' records and the best trial. Torch-free: the steps that only read a study (join, cards,
the CLI) load it in a fraction of a second; the worker loop is trainflow/search/worker.py.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from trainflow.core.config import HpoConfig, RunConfig, expand_env
from trainflow.core.errors import ConfigError, SearchError
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
    # The pruner is not stored in the study: every worker must build the same one.
    if cfg.hpo.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=cfg.train.eval_every)


def open_study(
    cfg: RunConfig, storage: str | optuna.storages.BaseStorage, study_name: str, sampler_seed: int = 0
) -> optuna.Study:
    """Create the study, or load it if it exists (safe to call from every worker)."""
    return optuna.create_study(
        study_name=study_name,
        storage=open_storage(storage, cfg.hpo),
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


def best_trial(study: optuna.Study) -> TrialRecord:
    """The best COMPLETE trial by the study's direction.

    Raises:
        SearchError: no trial completed (each one's state is named).
    """
    records = trial_records(study)
    try:
        best = study.best_trial  # ValueError when no trial is complete
    except ValueError:
        states = ", ".join(f"trial {r.number} {r.state}" for r in records) or "no trials"
        raise SearchError(
            f"no trial of study {study.study_name} completed ({states}): the train step's log says why each"
            " stopped; a pruned search needs more hpo.n_trials or hpo.pruner: none, a failed one a fix and `resume`"
        ) from None
    return next(r for r in records if r.number == best.number)
