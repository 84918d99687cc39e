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


def _origin(task: object) -> object:
    """The task a `resume` cloned `task` from (following clones of clones), or `task` itself: a
    cloned task did its work in the run it was cloned from, and its own times are the copy's."""
    from metaflow import Task

    seen = 0
    while seen < 100:
        fields = {m.name: m.value for m in task.metadata if m.name in ("origin-run-id", "origin-task-id")}  # type: ignore[attr-defined]
        if "origin-task-id" not in fields or "origin-run-id" not in fields:
            return task
        flow, _, step, _ = task.pathspec.split("/")  # type: ignore[attr-defined]
        task = Task(f"{flow}/{fields['origin-run-id']}/{step}/{fields['origin-task-id']}", _namespace_check=False)
        seen += 1
    return task


def task_timings(*, flow_name: str, run_id: str) -> list[TaskTiming]:
    """Every task of the run: step, task id, created (first attempt) and finished (latest
    attempt; None while it runs). A task a `resume` cloned is timed as in the run it was cloned
    from, so resuming never makes finished work look free. Reads all namespaces, then restores
    the caller's.

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
                timed = _origin(task)
                started = _aware(timed.created_at)  # type: ignore[attr-defined]
                if started is None:
                    raise RunMetadataError(f"task {timed.pathspec} has no creation time")  # type: ignore[attr-defined]
                out.append(TaskTiming(step.id, task.id, started, _aware(timed.finished_at)))  # type: ignore[attr-defined]
    except MetaflowNotFound as err:
        raise RunMetadataError(f"Metaflow has no run {flow_name}/{run_id}: {err}") from None
    finally:
        namespace(previous)
    return sorted(out, key=lambda t: (t.started, t.step, t.task_id))
