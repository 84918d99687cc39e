"""Step `join`: the best complete trial of the study."""

from __future__ import annotations

from trainflow.core.config import RunConfig
from trainflow.core.faults import fault_window
from trainflow.data.context import RunContext
from trainflow.records.tracking import lineage_ref, log_lineage_link
from trainflow.search.study import TrialRecord, best_trial, open_study, trial_records


def select_best(*, cfg: RunConfig, ctx: RunContext) -> tuple[TrialRecord, list[TrialRecord]]:
    """The best complete trial and all trial records. Raises SearchError if no trial completed."""
    study = open_study(cfg, ctx.storage, ctx.study_name)
    records = trial_records(study)
    best = best_trial(study)
    trial_ref = lineage_ref(cfg.name, "trial-model", ctx.run_key, best.number)
    log_lineage_link(cfg=cfg, run_key=ctx.run_key, directory=ctx.path, job_type="select", kind="best-model",
                     path=best.model_dir or "", parents=(trial_ref,), trial=best.number, value=best.value)  # fmt: skip
    fault_window("join")
    return best, records
