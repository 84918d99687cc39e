"""Step `publish`: write the package atomically, register it as staging, log its lineage, and
write the run's trial, package, lineage, cost and run records."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stages.export import ExportOutcome
from trainflow import lineage, registry
from trainflow.config import RunConfig
from trainflow.context import RunContext
from trainflow.cost import RunCost, TaskTiming, declared_resources, price_tasks
from trainflow.data import load_split
from trainflow.faults import fault_window
from trainflow.hpo import TrialRecord
from trainflow.modeling import checksum_model_dir, load_model, majority_baseline, read_head, resolve_base_model
from trainflow.publish import METADATA, PackageResult, git_commit, package_versions, publish_package, verify_package
from trainflow.quantize import QuantizeResult
from trainflow.records import write_records
from trainflow.tracking import lineage_ref, log_lineage_link

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


def build_metadata(
    *,
    cfg: RunConfig,
    ctx: RunContext,
    best: TrialRecord,
    records: list[TrialRecord],
    exported: ExportOutcome,
    quant: QuantizeResult,
    pathspec: str,
) -> dict[str, Any]:
    head = read_head(Path(exported.onnx_dir))
    base_dir = resolve_base_model(cfg.model.base)
    snap = ctx.snapshot
    baseline = majority_baseline(
        cfg.task.type, load_split(snap, "train").labels, load_split(snap, "test").labels, len(cfg.task.labels)
    )
    model, _ = load_model(Path(best.model_dir or ""))
    n_params = sum(p.numel() for p in model.parameters())
    output = (
        "logits: [batch, 1] scalar score s; P(y <= k) = sigmoid(cutpoints[k] - s); class = #(cutpoints < s)"
        if cfg.task.type == "ordinal"
        else f"logits: [batch, {len(cfg.task.labels)}]; class = argmax"
    )
    return {
        "model_name": cfg.name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": cfg.task.type,
        "label_map": {str(i): name for i, name in enumerate(cfg.task.labels)},
        "cutpoints": head["cutpoints"],
        "onnx": {
            "opset": exported.opset,
            "inputs": exported.inputs,
            "output": output,
            "max_length": cfg.model.max_length,
            # The options every latency in this file was measured with; reuse them to reproduce.
            "session_options": quant.session_options,
        },
        "base_model": {
            "name": cfg.model.base,
            "sha256": checksum_model_dir(base_dir) if Path(base_dir).is_dir() else None,
            "parameters": n_params,
        },
        "hyperparameters": {**best.params, **cfg.train.model_dump(), "frozen_layers": cfg.model.frozen_layers},
        "hpo": {
            "metric": cfg.hpo.metric,
            "direction": cfg.hpo.direction,
            "best_trial": best.number,
            "n_trials": len(records),
            "states": {r.state: sum(x.state == r.state for x in records) for r in records},
        },
        "metrics": {
            "validation": best.metrics,
            "test_fp32_onnx": quant.fp32_metrics,
            "test_int8_onnx": quant.int8_metrics,
            "test_majority_baseline": baseline,
            "int8_accuracy_drop": quant.accuracy_drop,
            "parity": asdict(exported.parity),
            "latency_batch1_fp32": quant.fp32_latency,
            "latency_batch1_int8": quant.int8_latency,
            "size_bytes": {"fp32": quant.fp32_size_bytes, "int8": quant.int8_size_bytes},
        },
        "quantization": {
            **quant.recipe,
            "node_counts": quant.node_counts,
            "chosen_recipe": quant.chosen,
            "max_accuracy_drop": cfg.quantize.max_accuracy_drop,
            "selection": "fastest batch-1 p50 among recipes within max_accuracy_drop of FP32 ONNX test accuracy;"
            f" p50s within {cfg.quantize.latency_tie:.0%} tie, then the smaller drop wins",
            "graph_optimization": quant.graph_optimization,
            "session_options": quant.session_options,
            "search": quant.search,
        },
        "dataset": {
            "version": snap.version,
            "sha256": snap.sha256,
            "source": snap.source,
            "rows": snap.n_rows,
            "splits": snap.split_counts,
            "labels": snap.label_counts,
        },
        "lineage": {
            "dataset_sha256": snap.sha256,
            "study": ctx.study_name,
            "trial": best.number,
            "trial_model_dir": best.model_dir,
            # dataset -> trial checkpoints/models -> best model -> FP32 ONNX -> INT8 ONNX, each
            # with its file's SHA-256 and its parents' ids and SHA-256s (trainflow/lineage.py).
            "nodes": lineage.to_metadata(
                lineage.build_lineage(
                    snapshot=snap,
                    records=records,
                    best=best,
                    fp32_onnx=Path(exported.onnx_path),
                    int8_onnx=Path(quant.int8_path),
                )
            ),
        },
        "git_commit": git_commit(ROOT),
        "metaflow": {"pathspec": pathspec, "run_key": ctx.run_key},
        "packages": package_versions(),
        "config": cfg.model_dump(mode="json"),
    }


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

    `timings` are the run's tasks so far (the flow reads them with
    `flows/trainflow_timings.py`); they are priced with `cfg.cost` into metadata.json
    `cost` and the `runs`/`costs` records. Without them the cost is recorded as not measured.

    Safe to repeat (a `resume` after the step was killed): the hidden temporary folder a killed
    attempt of this run left is removed, and a package this run already published (renamed into
    place, records perhaps not yet written) is verified and reused, so a run publishes once."""
    root = Path(cfg.publish.artifact_root).resolve()
    earlier = _clean_earlier_attempts(root / cfg.name, ctx.run_key)
    if earlier is not None:
        meta = json.loads((earlier / METADATA).read_text())
        version = meta["version"]
        package = PackageResult(path=str(earlier), version=version, files=verify_package(earlier))
        log.warning("package %s was published by an earlier attempt of this run; reusing it", earlier)
        cost = meta.get("cost") or {}
        run_cost = price_run(cfg=cfg, timings=timings) if timings is not None and cost.get("measured") else None
    else:
        meta = build_metadata(
            cfg=cfg, ctx=ctx, best=best, records=records, exported=exported, quant=quant, pathspec=pathspec
        )
        run_cost = price_run(cfg=cfg, timings=timings) if timings is not None else None
        meta["cost"] = run_cost.summary() if run_cost else {"measured": False, "note": "no task timings were given"}
        version = version or f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{ctx.run_key}"
        package = publish_package(
            artifact_root=root,
            model_name=cfg.name,
            version=version,
            sources=[Path(exported.onnx_dir), Path(best.model_dir or "")],
            metadata=meta,
        )
    fault_window("publish-renamed")
    registry.ensure_registered(artifact_root=root, model_name=cfg.name, version=version)
    onnx_ref = lineage_ref(cfg.name, "onnx-fp32", ctx.run_key)
    log_lineage_link(cfg=cfg, run_key=ctx.run_key, directory=ctx.path, job_type="publish", kind="int8-package",
                     path=package.path, parents=(onnx_ref,), version=version, recipe=quant.chosen,
                     int8_accuracy=quant.int8_metrics.get("accuracy"), accuracy_drop=quant.accuracy_drop)  # fmt: skip
    key = f"{cfg.name}-{ctx.run_key}"
    write_records(
        root, "lineage", f"{cfg.name}-{version}",
        lineage.to_rows(model_name=cfg.name, version=version,
                        nodes=[lineage.Node(**n) for n in meta["lineage"]["nodes"]]),
    )  # fmt: skip
    if run_cost is not None:
        write_records(
            root, "costs", key,
            [{"run_key": ctx.run_key, "model_name": cfg.name, "currency": run_cost.currency, **r}
             for r in run_cost.rows()],
        )  # fmt: skip
    write_records(
        root,
        "trials",
        key,
        [{"run_key": ctx.run_key, "model_name": cfg.name, "task": cfg.task.type, **r.to_dict()} for r in records],
    )
    m = meta["metrics"]
    write_records(
        root,
        "packages",
        f"{cfg.name}-{version}",
        [
            {
                "model_name": cfg.name,
                "version": version,
                "path": package.path,
                "task": cfg.task.type,
                "dataset_version": ctx.snapshot.version,
                "metric": cfg.hpo.metric,
                "val_metric": best.value,
                "test_accuracy": m["test_fp32_onnx"]["accuracy"],
                "test_metric": m["test_fp32_onnx"].get(cfg.hpo.metric),
                "int8_metric": m["test_int8_onnx"].get(cfg.hpo.metric),
                "int8_accuracy": m["test_int8_onnx"]["accuracy"],
                "int8_accuracy_drop": quant.accuracy_drop,
                "majority_baseline_accuracy": m["test_majority_baseline"]["accuracy"],
                "parity_max_abs_diff": exported.parity.max_abs_diff,
                "n_trials": len(records),
                "git_commit": meta["git_commit"],
                "pathspec": pathspec,
                "created_at": meta["created_at"],
            }
        ],
    )
    write_records(
        root,
        "runs",
        key,
        [
            {
                "run_key": ctx.run_key,
                "model_name": cfg.name,
                "pathspec": pathspec,
                "status": "published",
                "started_at": datetime.fromtimestamp(ctx.started_at, UTC).isoformat(timespec="seconds"),
                # Until publish: the end step (a print) follows.
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "duration_s": time.time() - ctx.started_at,
                **_cost_columns(meta["cost"]),
                "dataset_version": ctx.snapshot.version,
                "package_version": version,
                "best_trial": best.number,
                "config": json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
            }
        ],
    )
    return package


def _cost_columns(cost: dict[str, Any]) -> dict[str, Any]:
    """The run's cost totals as `runs` record columns (None when not measured)."""
    keys = {"cost": "total", "cost_currency": "currency", "cost_cpu": "cpu", "cost_gpu": "gpu",
            "cost_memory": "memory", "task_seconds": "task_seconds"}  # fmt: skip
    return {column: cost.get(key) for column, key in keys.items()}


def price_run(*, cfg: RunConfig, timings: list[TaskTiming], now: datetime | None = None) -> RunCost:
    """Price the run's tasks with `cfg.cost` and the resources each step declared."""
    per_step, default = declared_resources(compute=cfg.compute, cost=cfg.cost)
    return price_tasks(
        timings=timings, resources=per_step, default=default, rates=cfg.cost, now=now or datetime.now(UTC)
    )


def _clean_earlier_attempts(model_root: Path, run_key: str) -> Path | None:
    """Remove temporary package folders left by killed attempts of this run; return the package
    this run published already, if one is in place. Versions end in `-<run key>`, and a run
    publishes from one task at a time, so no live attempt's folder is touched."""
    if not model_root.is_dir():
        return None
    for tmp in model_root.glob(f".tmp-*-{run_key}-*"):
        log.warning("removing %s, a partial package left by an interrupted publish of this run", tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    done = sorted(p for p in model_root.glob(f"*-{run_key}") if p.is_dir() and not p.name.startswith("."))
    return done[-1] if done else None
