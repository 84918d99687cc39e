"""The Parquet records a published run leaves (trainflow/records/store.py): its package, its
lineage, its trials, its cost per task and the run itself, built from the package's metadata."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from trainflow.core.config import RunConfig
from trainflow.records.cost import RunCost
from trainflow.records.runs import run_record_key
from trainflow.records.store import CostRow, PackageRow, RunRow, TrialRow, as_json, write_rows
from trainflow.release.assemble import RunOutputs
from trainflow.release.lineage import to_rows
from trainflow.release.metadata import PackageMetadata
from trainflow.search.study import TrialRecord


def package_row(cfg: RunConfig, meta: PackageMetadata, path: str, best: TrialRecord) -> PackageRow:
    m = meta.metrics
    return PackageRow(
        model_name=cfg.name, version=meta.version, path=path, task=cfg.task.type,
        dataset_version=meta.dataset.version, metric=cfg.hpo.metric, val_metric=best.value,
        test_accuracy=m.test_fp32_onnx.get("accuracy"), test_metric=m.test_fp32_onnx.get(cfg.hpo.metric),
        int8_metric=m.test_int8_onnx.get(cfg.hpo.metric), int8_accuracy=m.test_int8_onnx.get("accuracy"),
        int8_accuracy_drop=m.int8_accuracy_drop, majority_baseline_accuracy=m.test_majority_baseline.get("accuracy"),
        parity_max_abs_diff=m.parity.max_abs_diff, n_trials=meta.hpo.n_trials, git_commit=meta.git_commit,
        pathspec=meta.metaflow.pathspec, created_at=meta.created_at, labels=as_json(cfg.task.labels),
        baseline_metric=m.test_majority_baseline.get(cfg.hpo.metric),
    )  # fmt: skip


def busy_seconds(tasks: list[CostRow], now: datetime) -> float:
    """How long any task of the run was running: the union of the tasks' intervals, so the idle
    time between a killed run and its `resume` is not counted (cloned tasks carry their origin's
    times)."""
    spans = sorted(
        (datetime.fromisoformat(t.started_at), datetime.fromisoformat(t.finished_at) if t.finished_at else now)
        for t in tasks
    )
    total, end = 0.0, None
    for start, stop in spans:
        if end is None or start > end:
            total += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds()
            end = stop
    return total


def run_row(
    cfg: RunConfig, run: RunOutputs, meta: PackageMetadata, pathspec: str, run_cost: RunCost | None = None,
    resumed_as: str | None = None,
) -> RunRow:  # fmt: skip
    ctx, cost = run.ctx, meta.cost
    now = datetime.now(UTC)
    duration = busy_seconds(run_cost.tasks, now) if run_cost and run_cost.tasks else time.time() - ctx.started_at
    return RunRow(
        run_key=ctx.run_key, model_name=cfg.name, pathspec=pathspec, status="published",
        started_at=datetime.fromtimestamp(ctx.started_at, UTC).isoformat(timespec="seconds"),
        # Until publish: the end step (a print) follows.
        finished_at=now.isoformat(timespec="seconds"), duration_s=duration,
        cost=cost.total, cost_currency=cost.currency, cost_cpu=cost.cpu, cost_gpu=cost.gpu, cost_memory=cost.memory,
        task_seconds=cost.task_seconds, dataset_version=ctx.snapshot.version, package_version=meta.version,
        best_trial=run.best.number, config=json.dumps(cfg.public_dump(), sort_keys=True),
        run_dir=ctx.run_dir, grace_s=float(cfg.hpo.heartbeat_grace_period), resumed_as=resumed_as,
    )  # fmt: skip


def trial_rows(cfg: RunConfig, run_key: str, records: list[TrialRecord]) -> list[TrialRow]:
    return [
        TrialRow(run_key=run_key, model_name=cfg.name, task=cfg.task.type, number=r.number, state=r.state,
                 worker=r.worker, params=as_json(r.params), value=r.value, metrics=as_json(r.metrics),
                 model_dir=r.model_dir, duration_s=r.duration_s, steps=r.steps, resumed_from_step=r.resumed_from_step,
                 latency_ms=r.latency_ms, size_mb=r.size_mb, feasible=r.feasible)
        for r in records
    ]  # fmt: skip


def write_run_records(
    *, artifact_root: Path, cfg: RunConfig, run: RunOutputs, meta: PackageMetadata, path: str,
    run_cost: RunCost | None, pathspec: str, resumed_as: str | None = None,
) -> None:  # fmt: skip
    """Write (replace) the run's lineage, cost, trial, package and run records; the run record
    last, so a run shows `published` only once everything else is there."""
    key = run_record_key(cfg.name, run.ctx.run_key)
    package_key = f"{cfg.name}-{meta.version}"
    write_rows(artifact_root, package_key, to_rows(model_name=cfg.name, version=meta.version, nodes=meta.lineage.nodes))
    if run_cost is not None and run_cost.tasks:
        write_rows(artifact_root, key, run_cost.tasks)
    write_rows(artifact_root, key, trial_rows(cfg, run.ctx.run_key, run.records))
    write_rows(artifact_root, package_key, [package_row(cfg, meta, path, run.best)])
    write_rows(artifact_root, key, [run_row(cfg, run, meta, pathspec, run_cost, resumed_as)])
