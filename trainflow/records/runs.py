"""A run's own record in the `runs` Parquet kind while it is under way: written `running` by the
flow's start before anything else (and again by a `resume`, naming the resumed run), and
`failed` (with the step and the error line) when a step fails, so `trainflow runs` lists failed
runs too. Publish replaces it with `published`. A resume writes the record of the run it resumes.

While a step runs, its task touches `<run dir>/.heartbeat` every HEARTBEAT_SECONDS
(`heartbeat`); a run recorded `running` whose heartbeat is older than its grace period (its tasks
were killed and nothing resumed them) is shown `interrupted` (`shown_status`)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from trainflow.core import layout
from trainflow.core.config import RunConfig
from trainflow.records.store import RunRow, write_rows

log = logging.getLogger(__name__)


def run_record_key(model_name: str, run_key: str) -> str:
    """The `runs` record file of a run (publish writes the same one)."""
    return f"{model_name}-{run_key}"


def write_run_status(
    cfg: RunConfig, run_key: str, *, pathspec: str, status: str, started_at: float,
    failure: tuple[str, str] | None = None, dataset_version: str | None = None, resumed_as: str | None = None,
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
        error=error, run_dir=str(run_folder(cfg, run_key)), grace_s=float(cfg.hpo.heartbeat_grace_period),
        resumed_as=resumed_as,
    )  # fmt: skip
    try:
        write_rows(Path(cfg.publish.artifact_root).resolve(), run_record_key(cfg.name, run_key), [row])
    except Exception as err:  # noqa: BLE001 - recording must never hide the run's own outcome
        log.warning("could not write the runs record of %s (%s): %s", run_key, status, err)


HEARTBEAT_SECONDS = 30.0


def run_folder(cfg: RunConfig, run_key: str) -> Path:
    return layout.run_dir(Path(cfg.publish.run_root), cfg.name, run_key).resolve()


@contextmanager
def heartbeat(run_folder: Path | None, interval: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Touch `<run_folder>/.heartbeat` now and every `interval` seconds until the block ends (a
    daemon thread: a killed task stops beating, which is the point). No folder: a no-op."""
    if run_folder is None:
        yield
        return
    beat = Path(run_folder) / layout.RUN_HEARTBEAT
    stop = threading.Event()

    def touch() -> None:
        try:
            beat.parent.mkdir(parents=True, exist_ok=True)
            beat.touch()
            os.utime(beat)
        except OSError as err:
            log.warning("run heartbeat %s: %s", beat, err)

    def loop() -> None:
        while not stop.wait(interval):
            touch()

    touch()
    thread = threading.Thread(target=loop, name="run-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
