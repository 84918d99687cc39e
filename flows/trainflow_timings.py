"""Read a run's task timings through the Metaflow client, as plain `TaskTiming`s for
`trainflow/records/cost.py` (Metaflow glue: it lives with the flow)."""

from __future__ import annotations

from datetime import UTC, datetime

from trainflow.core.errors import RunMetadataError
from trainflow.records.cost import TaskTiming


def _aware(value: datetime | None) -> datetime | None:
    # The client builds naive local-time datetimes (datetime.fromtimestamp(ts_epoch / 1000)).
    if value is None:
        return None
    return value.astimezone(UTC) if value.tzinfo is None else value


def task_timings(*, flow_name: str, run_id: str) -> list[TaskTiming]:
    """Every task of the run: step, task id, created (first attempt) and finished (latest
    attempt; None while it runs). Reads all namespaces, then restores the caller's.

    Raises:
        RunMetadataError: Metaflow does not know the run.
    """
    from metaflow import Run, get_namespace, namespace
    from metaflow.exception import MetaflowException, MetaflowNotFound

    try:
        previous = get_namespace()
    except MetaflowException:  # no user name known: there is no default namespace to restore
        previous = None
    namespace(None)
    try:
        run = Run(f"{flow_name}/{run_id}")
        out = []
        for step in run:
            for task in step:
                started = _aware(task.created_at)
                if started is None:
                    raise RunMetadataError(f"task {task.pathspec} has no creation time")
                out.append(TaskTiming(step.id, task.id, started, _aware(task.finished_at)))
    except MetaflowNotFound as err:
        raise RunMetadataError(f"Metaflow has no run {flow_name}/{run_id}: {err}") from None
    finally:
        namespace(previous)
    return sorted(out, key=lambda t: (t.started, t.step, t.task_id))
