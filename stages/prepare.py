"""Step `start`: the pre-flight check, the dataset snapshot and split, the Optuna study."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from trainflow.app.check import check_environment, check_model
from trainflow.core import layout
from trainflow.core.config import RunConfig
from trainflow.core.faults import fault_window
from trainflow.data.context import RunContext
from trainflow.data.dataset import snapshot_dataset
from trainflow.records.runs import write_run_status
from trainflow.records.tracking import log_lineage_link
from trainflow.search.study import open_study
from trainflow.search.warm_start import warm_start

log = logging.getLogger(__name__)


def prepare_run(*, cfg: RunConfig, run_key: str, pathspec: str = "") -> RunContext:
    """Record the run as running, run the pre-flight check (`trainflow check`: storage variables,
    the base model without its weights, every data problem at once), snapshot and split the data,
    create the Optuna study, queue the earlier study's best trials first (`hpo.warm_start`).
    Raises DatasetError on bad data (nothing trains), ConfigError, ModelLoadError."""
    started = time.time()
    write_run_status(cfg, run_key, pathspec=pathspec, status="running", started_at=started)
    check_environment(cfg)
    check_model(cfg)  # the base model's family, tokenizer, freezing and head, without its weights
    run_dir = layout.run_dir(Path(cfg.publish.run_root), cfg.name, run_key).resolve()
    snapshot = snapshot_dataset(data=cfg.data, task=cfg.task, seed=cfg.seed, out_dir=run_dir / layout.DATA_DIR)
    storage = cfg.hpo.storage or str(run_dir / layout.JOURNAL)
    study_name = f"{cfg.name}-{run_key}"
    warm_start(open_study(cfg, storage, study_name), cfg)
    log.info("dataset %s: %s rows, splits %s", snapshot.version, snapshot.rows, snapshot.splits)
    ctx = RunContext(run_key, str(run_dir), storage, study_name, snapshot, started)
    log_lineage_link(cfg=cfg, run_key=run_key, directory=ctx.path, job_type="dataset", kind="dataset",
                     path=snapshot.directory, version=snapshot.version, sha256=snapshot.sha256)  # fmt: skip
    fault_window("start")
    return ctx
