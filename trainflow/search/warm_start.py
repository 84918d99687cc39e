"""Warm start: an earlier study's best complete trials are tried first (`hpo.warm_start`).

The source is a run id of the same model (its study in `hpo.storage`, or the journal in its run
folder) or the path of an Optuna journal holding one study. Its best complete trials within their
own deployment limits, at most `hpo.warm_start_trials`, are enqueued in the new study when their
parameters fit the new search space; each one that does not is skipped with a note naming why.
Parameters named by an earlier release (`learning_rate`, `weight_decay`, `warmup_ratio`) are read
as the `train.` fields they set. Enqueueing happens once per study (a study user attr marks it),
so a retried or resumed start step adds nothing twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from trainflow.core import layout
from trainflow.core.config import LEGACY_SPACE, RunConfig, expand_env
from trainflow.core.errors import SearchError
from trainflow.search import space as search_space
from trainflow.search.study import open_storage

log = logging.getLogger(__name__)

WARM_STARTED_ATTR = "warm_started_from"  # study user attr: the source, once its trials are enqueued


def _source(cfg: RunConfig) -> optuna.Study:
    spec = str(cfg.hpo.warm_start)
    as_path = Path(expand_env(spec))
    if as_path.suffix == ".journal" or "/" in spec:
        if not as_path.is_file():
            raise SearchError(f"hpo.warm_start: {spec!r} is not a file; name an Optuna journal or a run id")
        storage: Any = open_storage(str(as_path))
        names = optuna.get_all_study_names(storage)
        if len(names) != 1:
            raise SearchError(f"hpo.warm_start: journal {spec} holds {len(names)} studies ({names}); it must"
                                                 " hold one")  # fmt: skip
        return optuna.load_study(study_name=names[0], storage=storage)
    study_name = f"{cfg.name}-{spec}"
    if cfg.hpo.storage:
        storage = open_storage(cfg.hpo.storage)
    else:
        journal = layout.run_dir(Path(cfg.publish.run_root), cfg.name, spec) / layout.JOURNAL
        if not journal.is_file():
            raise SearchError(f"hpo.warm_start: no run {spec} of model {cfg.name} under {cfg.publish.run_root}"
                                                 f" (no {journal}); name a run id of this model or an Optuna"
                                                 " journal")  # fmt: skip
        storage = open_storage(str(journal))
    if study_name not in optuna.get_all_study_names(storage):
        raise SearchError(f"hpo.warm_start: no study {study_name} in {cfg.hpo.storage or journal}; name a run"
                                             " id of this model or an Optuna journal")  # fmt: skip
    return optuna.load_study(study_name=study_name, storage=storage)


def _params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {(LEGACY_SPACE[k][0] if k in LEGACY_SPACE else k): v for k, v in trial.params.items()}


def best_earlier_trials(cfg: RunConfig) -> list[optuna.trial.FrozenTrial]:
    """The source study's best complete trials within their limits, best first (at most
    `hpo.warm_start_trials`)."""
    source = _source(cfg)
    done = [t for t in source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None and t.user_attrs.get("feasible", True) is not False]  # fmt: skip
    sign = -1 if source.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(done, key=lambda t: (sign * float(t.value), t.number))[: cfg.hpo.warm_start_trials]  # type: ignore[arg-type]


def warm_start(study: optuna.Study, cfg: RunConfig) -> list[str]:
    """Enqueue the earlier study's best trials that fit this search space; the notes on the ones
    that did not. Nothing when `hpo.warm_start` is unset or this study was warm-started already.

    Raises:
        SearchError: the source names no run, journal or study.
    """
    if not cfg.hpo.warm_start or WARM_STARTED_ATTR in study.user_attrs:
        return []
    notes: list[str] = []
    queued = 0
    for t in best_earlier_trials(cfg):
        params = _params(t)
        problem = search_space.misfit(cfg, params)
        if problem is not None:
            notes.append(f"warm start: earlier trial {t.number} ({t.value:.4f}) skipped: {problem}")
            continue
        study.enqueue_trial(params, user_attrs={"warm_start_from": t.number}, skip_if_exists=True)
        queued += 1
    study.set_user_attr(WARM_STARTED_ATTR, str(cfg.hpo.warm_start))
    for note in notes:
        log.warning("%s", note)
    log.info("warm start from %s: %d earlier trial(s) queued first", cfg.hpo.warm_start, queued)
    return notes
