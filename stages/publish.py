"""Step `publish`: write the package atomically, register it as staging, log its lineage, and
write the run's trial, package, lineage, cost and run records."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from stages.export import ExportOutcome
from trainflow.convert.quantize import QuantizeResult
from trainflow.core.config import RunConfig
from trainflow.core.faults import fault_window
from trainflow.core.io import sha256_file
from trainflow.data.context import RunContext
from trainflow.data.dataset import load_split
from trainflow.records.cost import RunCost, TaskTiming, declared_resources, price_tasks
from trainflow.records.runs import run_record_key
from trainflow.records.store import PackageRow, RunRow, TrialRow, as_json, write_rows
from trainflow.records.tracking import lineage_ref, log_lineage_link
from trainflow.release import lineage, registry
from trainflow.release.metadata import (
    BaseModelInfo,
    HpoSummary,
    LineageInfo,
    Metrics,
    OnnxInfo,
    PackageMetadata,
    QuantizationInfo,
    RunRef,
    read_metadata,
)
from trainflow.release.package import (
    PackageResult,
    git_commit,
    package_versions,
    publish_package,
    remove_stale_temps,
    verify_package,
)
from trainflow.release.registry import metadata_or_none
from trainflow.search.study import TrialRecord
from trainflow.tasks.heads import majority_baseline
from trainflow.training.modeling import checksum_model_dir, count_parameters, read_head, resolve_base_model

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunOutputs:
    """What the steps before publish produced, as the flow hands it over."""

    ctx: RunContext
    best: TrialRecord
    records: list[TrialRecord]
    exported: ExportOutcome
    quant: QuantizeResult


def _metrics(cfg: RunConfig, run: RunOutputs) -> Metrics:
    snap, quant = run.ctx.snapshot, run.quant
    baseline = majority_baseline(
        cfg.task.type, load_split(snap, "train").labels, load_split(snap, "test").labels, len(cfg.task.labels)
    )
    return Metrics(
        validation=run.best.metrics,
        test_fp32_onnx=quant.fp32_metrics,
        test_int8_onnx=quant.int8_metrics,
        test_majority_baseline=baseline,
        int8_accuracy_drop=quant.accuracy_drop,
        parity=asdict(run.exported.parity),
        latency_batch1_fp32=quant.fp32_latency,
        latency_batch1_int8=quant.int8_latency,
        size_bytes={"fp32": quant.fp32_size_bytes, "int8": quant.int8_size_bytes},
    )


def _quantization(cfg: RunConfig, quant: QuantizeResult) -> QuantizationInfo:
    return QuantizationInfo(
        recipe=quant.recipe,
        node_counts=quant.node_counts,
        chosen_recipe=quant.chosen,
        max_accuracy_drop=cfg.quantize.max_accuracy_drop,
        selection="the first recipe, in the configured order (fastest expected first), whose test accuracy is within"
        " max_accuracy_drop of FP32 ONNX and whose batch-1 p50 beats FP32's; recipes are screened on"
        f" {cfg.quantize.screen_samples} test texts first",
        graph_optimization=quant.graph_optimization,
        session_options=quant.session_options,
        search=quant.search,
    )


def _lineage(run: RunOutputs) -> LineageInfo:
    # dataset -> trial checkpoints/models -> best model -> FP32 ONNX -> INT8 ONNX, each with its
    # file's SHA-256 and its parents' ids and SHA-256s (trainflow/release/lineage.py).
    nodes = lineage.build_lineage(
        snapshot=run.ctx.snapshot,
        records=run.records,
        best=run.best,
        fp32_onnx=Path(run.exported.onnx_path),
        int8_onnx=Path(run.quant.int8_path),
    )
    return LineageInfo(
        dataset_sha256=run.ctx.snapshot.sha256,
        study=run.ctx.study_name,
        trial=run.best.number,
        trial_model_dir=run.best.model_dir,
        nodes=lineage.to_metadata(nodes),
    )


def _onnx_info(cfg: RunConfig, run: RunOutputs) -> OnnxInfo:
    output = (
        "logits: [batch, 1] scalar score s; P(y <= k) = sigmoid(cutpoints[k] - s); class = #(cutpoints < s)"
        if cfg.task.type == "ordinal"
        else f"logits: [batch, {len(cfg.task.labels)}]; class = argmax"
    )
    # The session options every latency in the metadata was measured with; reuse them to reproduce.
    return OnnxInfo(opset=run.exported.opset, inputs=run.exported.inputs, output=output,
                    max_length=cfg.model.max_length, session_options=run.quant.session_options)  # fmt: skip


def build_metadata(*, cfg: RunConfig, run: RunOutputs, pathspec: str, version: str, cost: dict) -> PackageMetadata:
    """The package's metadata.json (trainflow/release/metadata.py) from what the run's steps produced."""
    base_dir = resolve_base_model(cfg.model.base)
    best, records = run.best, run.records
    return PackageMetadata(
        model_name=cfg.name,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        task=cfg.task.type,
        label_map={str(i): name for i, name in enumerate(cfg.task.labels)},
        cutpoints=read_head(Path(run.exported.onnx_dir))["cutpoints"],
        onnx=_onnx_info(cfg, run),
        base_model=BaseModelInfo(
            name=cfg.model.base,
            sha256=checksum_model_dir(base_dir) if Path(base_dir).is_dir() else None,
            parameters=count_parameters(Path(best.model_dir or "")),
        ),
        hyperparameters={**best.params, **cfg.train.model_dump(), "frozen_layers": cfg.model.frozen_layers},
        hpo=HpoSummary(
            metric=cfg.hpo.metric,
            direction=cfg.hpo.direction,
            best_trial=best.number,
            n_trials=len(records),
            states={r.state: sum(x.state == r.state for x in records) for r in records},
        ),
        metrics=_metrics(cfg, run),
        quantization=_quantization(cfg, run.quant),
        dataset=run.ctx.snapshot.summary(),
        lineage=_lineage(run),
        git_commit=git_commit(ROOT),
        metaflow=RunRef(pathspec=pathspec, run_key=run.ctx.run_key),
        packages=package_versions(),
        config=cfg.public_dump(),
        cost=cost,
        serving=run.quant.serving,
    )


def price_run(*, cfg: RunConfig, timings: list[TaskTiming], run_key: str = "", now: datetime | None = None) -> RunCost:
    """Price the run's tasks with `cfg.cost` and the resources each step declared."""
    per_step, default = declared_resources(compute=cfg.compute, cost=cfg.cost)
    return price_tasks(timings=timings, resources=per_step, default=default, rates=cfg.cost,
                       now=now or datetime.now(UTC), run_key=run_key, model_name=cfg.name)  # fmt: skip


def _earlier_package(model_root: Path, run: RunOutputs) -> Path | None:
    """Remove the temporary package folders that killed attempts of this run left (never one a
    live attempt is writing: its lock is held); return a package of this run already in place
    whose metadata matches this attempt's inputs (best trial, FP32 ONNX digest), if any. A
    package of an earlier attempt made from other inputs is left alone: this attempt publishes
    its own version."""
    if not model_root.is_dir():
        return None
    for tmp in remove_stale_temps(model_root, f".tmp-*-{run.ctx.run_key}-*"):
        log.warning("removed %s, a partial package left by an interrupted publish of this run", tmp)
    onnx_digest = sha256_file(run.exported.onnx_path)
    for folder in sorted((p for p in model_root.glob(f"*-{run.ctx.run_key}") if p.is_dir()), reverse=True):
        if folder.name.startswith("."):
            continue
        meta = metadata_or_none(folder)
        fp32 = [n for n in (meta.lineage.nodes if meta else []) if n.get("kind") == "onnx_fp32"]
        if meta and meta.lineage.trial == run.best.number and fp32 and fp32[0]["sha256"] == onnx_digest:
            return folder
        log.warning("package %s of an earlier attempt was made from other inputs (best trial or ONNX); not reused",
                    folder)  # fmt: skip
    return None


def _write_package(
    cfg: RunConfig, run: RunOutputs, pathspec: str, version: str | None, timings: list[TaskTiming] | None
) -> tuple[PackageResult, PackageMetadata, RunCost | None]:
    """The package this run published (an earlier attempt's, verified), or a new one."""
    root = Path(cfg.publish.artifact_root).resolve()
    run_key = run.ctx.run_key
    earlier = _earlier_package(root / cfg.name, run)
    if earlier is not None:
        meta = read_metadata(earlier)
        package = PackageResult(path=str(earlier), version=meta.version, files=verify_package(earlier))
        log.warning("package %s was published by an earlier attempt of this run; reusing it", earlier)
        measured = timings is not None and meta.cost.get("measured", True)
        return package, meta, price_run(cfg=cfg, timings=timings or [], run_key=run_key) if measured else None
    run_cost = price_run(cfg=cfg, timings=timings, run_key=run_key) if timings is not None else None
    cost = run_cost.summary() if run_cost else {"measured": False, "note": "no task timings were given"}
    version = version or f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{run_key}"
    meta = build_metadata(cfg=cfg, run=run, pathspec=pathspec, version=version, cost=cost)
    sources = [Path(run.exported.onnx_dir), Path(run.best.model_dir or "")]
    return publish_package(artifact_root=root, sources=sources, metadata=meta), meta, run_cost


def _package_row(cfg: RunConfig, meta: PackageMetadata, package: PackageResult, best: TrialRecord) -> PackageRow:
    m = meta.metrics
    return PackageRow(
        model_name=cfg.name, version=meta.version, path=package.path, task=cfg.task.type,
        dataset_version=meta.dataset.version, metric=cfg.hpo.metric, val_metric=best.value,
        test_accuracy=m.test_fp32_onnx["accuracy"], test_metric=m.test_fp32_onnx.get(cfg.hpo.metric),
        int8_metric=m.test_int8_onnx.get(cfg.hpo.metric), int8_accuracy=m.test_int8_onnx["accuracy"],
        int8_accuracy_drop=m.int8_accuracy_drop, majority_baseline_accuracy=m.test_majority_baseline["accuracy"],
        parity_max_abs_diff=m.parity.max_abs_diff, n_trials=meta.hpo.n_trials, git_commit=meta.git_commit,
        pathspec=meta.metaflow.pathspec, created_at=meta.created_at,
        labels=as_json(cfg.task.labels),
    )  # fmt: skip


def _run_row(cfg: RunConfig, ctx: RunContext, meta: PackageMetadata, pathspec: str, best: TrialRecord) -> RunRow:
    cost = meta.cost
    return RunRow(
        run_key=ctx.run_key, model_name=cfg.name, pathspec=pathspec, status="published",
        started_at=datetime.fromtimestamp(ctx.started_at, UTC).isoformat(timespec="seconds"),
        # Until publish: the end step (a print) follows.
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"), duration_s=time.time() - ctx.started_at,
        cost=cost.get("total"), cost_currency=cost.get("currency"), cost_cpu=cost.get("cpu"),
        cost_gpu=cost.get("gpu"), cost_memory=cost.get("memory"), task_seconds=cost.get("task_seconds"),
        dataset_version=ctx.snapshot.version, package_version=meta.version, best_trial=best.number,
        config=json.dumps(cfg.public_dump(), sort_keys=True),
    )  # fmt: skip


def _trial_rows(cfg: RunConfig, ctx: RunContext, records: list[TrialRecord]) -> list[TrialRow]:
    return [
        TrialRow(run_key=ctx.run_key, model_name=cfg.name, task=cfg.task.type, number=r.number, state=r.state,
                 worker=r.worker, params=as_json(r.params), value=r.value, metrics=as_json(r.metrics),
                 model_dir=r.model_dir, duration_s=r.duration_s, steps=r.steps, resumed_from_step=r.resumed_from_step)
        for r in records
    ]  # fmt: skip


def _write_records(
    root: Path, cfg: RunConfig, run: RunOutputs, meta: PackageMetadata, package: PackageResult,
    run_cost: RunCost | None, pathspec: str,
) -> None:  # fmt: skip
    key = run_record_key(cfg.name, run.ctx.run_key)
    nodes = [lineage.Node(**n) for n in meta.lineage.nodes]
    write_rows(
        root, f"{cfg.name}-{meta.version}", lineage.to_rows(model_name=cfg.name, version=meta.version, nodes=nodes)
    )
    if run_cost is not None and run_cost.tasks:
        write_rows(root, key, run_cost.tasks)
    write_rows(root, key, _trial_rows(cfg, run.ctx, run.records))
    write_rows(root, f"{cfg.name}-{meta.version}", [_package_row(cfg, meta, package, run.best)])
    write_rows(root, key, [_run_row(cfg, run.ctx, meta, pathspec, run.best)])


def publish_run(
    *,
    cfg: RunConfig,
    ctx: RunContext,
    best: TrialRecord,
    records: list[TrialRecord],
    exported: ExportOutcome,
    quant: QuantizeResult,
    pathspec: str,
    version: str | None = None,
    timings: list[TaskTiming] | None = None,
) -> PackageResult:
    """Write the package atomically, register it as `staging`, and write the run, trial,
    package, lineage and cost Parquet records.

    `timings` are the run's tasks so far (the flow reads them with `flows/trainflow_timings.py`);
    they are priced with `cfg.cost` into metadata.json `cost` and the `runs`/`costs` records.
    Without them the cost is recorded as not measured.

    Safe to repeat (a `resume` after the step was killed): the hidden temporary folder a killed
    attempt of this run left is removed, and a package this run already published (renamed into
    place, records perhaps not yet written) is verified and reused, so a run publishes once."""
    root = Path(cfg.publish.artifact_root).resolve()
    run = RunOutputs(ctx, best, records, exported, quant)
    package, meta, run_cost = _write_package(cfg, run, pathspec, version, timings)
    fault_window("publish-renamed")
    registry.ensure_registered(artifact_root=root, model_name=cfg.name, version=meta.version)
    onnx_ref = lineage_ref(cfg.name, "onnx-fp32", ctx.run_key)
    log_lineage_link(cfg=cfg, run_key=ctx.run_key, directory=ctx.path, job_type="publish", kind="int8-package",
                     path=package.path, parents=(onnx_ref,), version=meta.version, recipe=quant.chosen,
                     int8_accuracy=quant.int8_metrics.get("accuracy"), accuracy_drop=quant.accuracy_drop)  # fmt: skip
    _write_records(root, cfg, run, meta, package, run_cost, pathspec)
    return package
