"""A run's own record in the `runs` Parquet kind while it is under way: written `running` by the
flow's start before anything else, and `failed` (with the step and the error line) when a step
fails, so `trainflow runs` lists failed runs too. Publish replaces it with `published`."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from trainflow.core.config import RunConfig
from trainflow.records.store import RunRow, write_rows

log = logging.getLogger(__name__)


def run_record_key(model_name: str, run_key: str) -> str:
    """The `runs` record file of a run (publish writes the same one)."""
    return f"{model_name}-{run_key}"


def write_run_status(
    cfg: RunConfig, run_key: str, *, pathspec: str, status: str, started_at: float,
    failure: tuple[str, str] | None = None, dataset_version: str | None = None,
) -> None:  # fmt: skip
    """Write (replace) the run's record; `failure` is (step, error line) for status failed.
    Never raises: a record that cannot be written is logged, and the run goes on (or fails with
    its own error)."""
    failed_step, error = failure or (None, None)
    now = time.time()
    row = RunRow(
        run_key=run_key, model_name=cfg.name, pathspec=pathspec, status=status,
        started_at=datetime.fromtimestamp(started_at, UTC).isoformat(timespec="seconds"),
        finished_at=None if status == "running" else datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        duration_s=None if status == "running" else now - started_at, cost=None, cost_currency=None, cost_cpu=None,
        cost_gpu=None, cost_memory=None, task_seconds=None, dataset_version=dataset_version, package_version=None,
        best_trial=None, config=json.dumps(cfg.public_dump(), sort_keys=True), failed_step=failed_step,
        error=error,
    )  # fmt: skip
    try:
        write_rows(Path(cfg.publish.artifact_root).resolve(), run_record_key(cfg.name, run_key), [row])
    except Exception as err:  # noqa: BLE001 - recording must never hide the run's own outcome
        log.warning("could not write the runs record of %s (%s): %s", run_key, status, err)
