"""Step `join`: the best complete trial of the study, and why the search stopped if it stopped early."""

from __future__ import annotations

import logging

from trainflow.core.config import RunConfig
from trainflow.core.faults import fault_window
from trainflow.data.context import RunContext
from trainflow.records.tracking import lineage_ref, log_lineage_link
from trainflow.search.study import TrialRecord, best_trial, open_study, stopped_reason, trial_records

log = logging.getLogger(__name__)


def select_best(*, cfg: RunConfig, ctx: RunContext) -> tuple[TrialRecord, list[TrialRecord]]:
    """The best complete trial (within `hpo.constraints` when set) and all trial records. Raises
    SearchError if no trial completed, or none is within the limits."""
    study = open_study(cfg, ctx.storage, ctx.study_name)
    records = trial_records(study)
    if (reason := stopped_reason(study)) is not None:
        log.info("the search stopped after %d of %d trials: %s", len(records), cfg.hpo.n_trials, reason)
    best = best_trial(study)
    log.info("best trial %d: validation %s %.4f, parameters %s", best.number, cfg.hpo.metric, best.value, best.params)
    trial_ref = lineage_ref(cfg.name, "trial-model", ctx.run_key, best.number)
    log_lineage_link(cfg=cfg, run_key=ctx.run_key, directory=ctx.path, job_type="select", kind="best-model",
                     path=best.model_dir or "", parents=(trial_ref,), trial=best.number, value=best.value)  # fmt: skip
    fault_window("join")
    return best, records


def search_stopped(*, cfg: RunConfig, ctx: RunContext) -> str | None:
    """Why the search asked no more trials before `hpo.n_trials` (`hpo.budget`), or None."""
    return stopped_reason(open_study(cfg, ctx.storage, ctx.study_name))
