"""A run's liveness and its resumes, seen from the steps (Metaflow glue: it reads `current`).

`beating` wraps each step: while it runs, the task touches the run's heartbeat
(trainflow/records/runs.py), so a run whose tasks were killed shows `interrupted` once its grace
period passes. In a `resume`, the first step that runs again records the run as `running` once
more, under the run it resumes (its record, not a new one), naming the resumed run's id.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from metaflow import current

from trainflow.core.layout import records_dir
from trainflow.records.runs import HEARTBEAT_SECONDS, heartbeat, run_record_key, write_run_status


def resumed_as() -> str | None:
    """This run's id when it is a `resume` of another run, else None."""
    return str(current.run_id) if getattr(current, "origin_run_id", None) else None


def _recorded(cfg: Any, run_key: str) -> dict[str, Any]:
    path = (
        records_dir(Path(cfg.publish.artifact_root).resolve(), "runs") / f"{run_record_key(cfg.name, run_key)}.parquet"
    )
    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError):
        return {}
    return rows[0] if rows else {}


def _ctx(flow: Any) -> Any:
    """The run context, once start has made it (a join sees it only after merging: None then)."""
    try:
        return flow.ctx
    except Exception:  # noqa: BLE001 - Metaflow raises its own errors for an artifact not there yet
        return None


def _mark_resumed(flow: Any, step_name: str) -> None:
    ctx = _ctx(flow)
    resume = resumed_as()
    if ctx is None or resume is None or step_name == "end":
        return
    if _recorded(flow.cfg, ctx.run_key).get("resumed_as") == resume:
        return  # an earlier step of this resume said so already
    write_run_status(flow.cfg, ctx.run_key, pathspec=current.pathspec, status="running", started_at=ctx.started_at,
                     dataset_version=ctx.snapshot.version, resumed_as=resume)  # fmt: skip


def beating(step_fn: Callable) -> Callable:
    """Step decorator (under @step): the run's heartbeat while the step runs."""

    @functools.wraps(step_fn)
    def run(self: Any, *args: Any) -> Any:
        _mark_resumed(self, step_fn.__name__)
        ctx = _ctx(self)
        interval = min(HEARTBEAT_SECONDS, float(self.cfg.hpo.heartbeat_interval or HEARTBEAT_SECONDS))
        with heartbeat(Path(ctx.run_dir) if ctx is not None else None, interval):
            return step_fn(self, *args)

    return run
