"""The flow's steps as plain functions: each takes typed inputs and returns a small result, so
the Metaflow flow only moves data and every step runs (and is tested) without Metaflow."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stages import lineage, registry
from stages.config import RunConfig
from stages.cost import RunCost, TaskTiming, declared_resources, price_tasks
from stages.data import Snapshot, load_split, snapshot_dataset
from stages.export import export_onnx
from stages.faults import fault_window
from stages.hpo import TrialRecord, best_trial, open_study, trial_records
from stages.modeling import checksum_model_dir, load_model, majority_baseline, read_head, resolve_base_model
from stages.publish import METADATA, PackageResult, git_commit, package_versions, publish_package, verify_package
from stages.quantize import QuantizeResult, quantize_and_gate
from stages.records import write_records
from stages.tracking import lineage_artifact, lineage_ref, log_lineage
from stages.verify import ParityResult, check_parity

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunContext:
    """Where a run keeps its files and its study; fixed in `start` and unchanged on resume."""

    run_key: str
    run_dir: str
    storage: str
    study_name: str
    snapshot: Snapshot
    started_at: float

    @property
    def path(self) -> Path:
        return Path(self.run_dir)


def prepare_run(*, cfg: RunConfig, run_key: str) -> RunContext:
    """Snapshot and split the data, create the Optuna study. Raises DatasetError on bad data."""
    run_dir = (Path(cfg.publish.run_root) / cfg.name / run_key).resolve()
    snapshot = snapshot_dataset(data=cfg.data, task=cfg.task, seed=cfg.seed, out_dir=run_dir / "data")
    storage = cfg.hpo.storage or str(run_dir / "optuna.journal")
    study_name = f"{cfg.name}-{run_key}"
    open_study(cfg, storage, study_name)
    log.info("dataset %s: %s rows, splits %s", snapshot.version, snapshot.n_rows, snapshot.split_counts)
    ctx = RunContext(run_key, str(run_dir), storage, study_name, snapshot, time.time())
    _lineage(cfg, ctx, "dataset", "dataset", snapshot.directory, (), version=snapshot.version, sha256=snapshot.sha256)
    fault_window("start")
    return ctx


def _lineage(
    cfg: RunConfig, ctx: RunContext, job_type: str, kind: str, path: str | Path, parents: tuple[str, ...], **meta: Any
) -> str | None:
    """Log one link of the W&B artifact chain (see stages.tracking) from a short run `job_type`."""
    artifact = lineage_artifact(
        model_name=cfg.name, kind=kind, run_key=ctx.run_key, path=path, parents=parents, metadata=meta
    )
    return log_lineage(
        tracking=cfg.tracking, artifact=artifact, group=ctx.run_key, job_type=job_type, directory=ctx.path
    )


def select_best(*, cfg: RunConfig, ctx: RunContext) -> tuple[TrialRecord, list[TrialRecord]]:
    """The best complete trial and all trial records. Raises ValueError if no trial completed."""
    study = open_study(cfg, ctx.storage, ctx.study_name)
    records = trial_records(study)
    try:
        best = best_trial(study)
    except ValueError:
        states = {r.number: r.state for r in records}
        raise ValueError(f"no trial of study {ctx.study_name} completed (states: {states})") from None
    trial_ref = lineage_ref(cfg.name, "trial-model", ctx.run_key, best.number)
    _lineage(cfg, ctx, "select", "best-model", best.model_dir or "", (trial_ref,), trial=best.number, value=best.value)
    fault_window("join")
    return best, records


@dataclass(frozen=True)
class ExportOutcome:
    onnx_dir: str
    onnx_path: str
    opset: int
    inputs: list[str]
    parity: ParityResult


def export_and_check(*, cfg: RunConfig, ctx: RunContext, model_dir: str) -> ExportOutcome:
    """ONNX export, then the parity gate on held-out test samples (raises ParityError)."""
    onnx_dir = ctx.path / "onnx"
    result = export_onnx(model_dir=Path(model_dir), out_dir=onnx_dir, export=cfg.export)
    test = load_split(ctx.snapshot, "test")
    parity = check_parity(
        model_dir=Path(model_dir),
        onnx_path=Path(result.onnx_path),
        texts=test.texts[: cfg.export.parity_samples],
        max_length=cfg.model.max_length,
        atol=cfg.export.parity_atol,
    )
    best_ref = lineage_ref(cfg.name, "best-model", ctx.run_key)
    _lineage(cfg, ctx, "export", "onnx-fp32", result.onnx_path, (best_ref,), opset=result.opset, parity=asdict(parity))
    fault_window("export")
    return ExportOutcome(str(onnx_dir), result.onnx_path, result.opset, result.inputs, parity)


def quantize(*, cfg: RunConfig, ctx: RunContext, exported: ExportOutcome) -> QuantizeResult:
    """INT8 recipe search and the accuracy gate (raises QuantizationAccuracyError if no recipe passes)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported.onnx_dir)
    head = read_head(Path(exported.onnx_dir))
    result = quantize_and_gate(
        fp32_path=Path(exported.onnx_path),
        tokenizer=tokenizer,
        task=cfg.task.type,
        n_classes=len(cfg.task.labels),
        cutpoints=head["cutpoints"],
        calibration=load_split(ctx.snapshot, "calibration"),
        test=load_split(ctx.snapshot, "test"),
        max_length=cfg.model.max_length,
        q=cfg.quantize,
    )
    fault_window("quantize")
    return result


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
            # with its file's SHA-256 and its parents' ids and SHA-256s (stages/lineage.py).
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


def publish(
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
    `stages.run_metadata.task_timings`); they are priced with `cfg.cost` into metadata.json
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
    _lineage(cfg, ctx, "publish", "int8-package", package.path, (onnx_ref,), version=version, recipe=quant.chosen,
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


def summarize(package_path: str) -> dict[str, Any]:
    """What `end` prints: where the package is and the headline metrics from its metadata."""
    meta = json.loads((Path(package_path) / "metadata.json").read_text())
    m = meta["metrics"]
    return {
        "package": package_path,
        "version": meta["version"],
        "best_trial": meta["hpo"]["best_trial"],
        "hyperparameters": {k: meta["hyperparameters"][k] for k in ("learning_rate", "weight_decay", "warmup_ratio")},
        "validation": m["validation"],
        "test_fp32_onnx": m["test_fp32_onnx"],
        "test_int8_onnx": m["test_int8_onnx"],
        "test_majority_baseline": m["test_majority_baseline"],
        "parity_max_abs_diff": m["parity"]["max_abs_diff"],
        "int8_accuracy_drop": m["int8_accuracy_drop"],
    }
