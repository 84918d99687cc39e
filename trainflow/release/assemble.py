"""metadata.json of a package, assembled from what a run's steps produced (`RunOutputs`): metrics,
the INT8 search, the lineage, the search summary, versions of the stack and the cost."""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path

from trainflow.convert.export import ExportOutcome
from trainflow.convert.quantize import QuantizeResult
from trainflow.core.config import RunConfig
from trainflow.data.context import RunContext
from trainflow.data.dataset import load_split
from trainflow.records.cost import CostSummary
from trainflow.release.lineage import build_lineage
from trainflow.release.metadata import (
    BaseModelInfo,
    HpoSummary,
    LineageInfo,
    Metrics,
    OnnxInfo,
    PackageMetadata,
    QuantizationInfo,
    RunRef,
)
from trainflow.search.distill import DistillOutcome, ModelSummary, shipped_config
from trainflow.search.refit import RefitResult
from trainflow.search.study import TrialRecord
from trainflow.tasks.heads import read_head
from trainflow.tasks.task import TaskHead
from trainflow.tasks.task import baseline as trivial_baseline
from trainflow.training.base_model import checksum_model_dir, count_parameters, resolve_base_model

REPO = Path(__file__).resolve().parents[2]  # the checkout whose commit a package records
TRACKED_PACKAGES = (
    "torch", "transformers", "tokenizers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
    "metaflow", "metaflow-checkpoint", "optuna", "wandb", "duckdb", "pyarrow",
)  # fmt: skip


@dataclass(frozen=True)
class RunOutputs:
    """What the steps before publish produced, as the flow hands it over."""

    ctx: RunContext
    best: TrialRecord
    records: list[TrialRecord]
    exported: ExportOutcome
    quant: QuantizeResult
    refit: RefitResult | None = None  # hpo.refit: the model exported is this refit of the best trial's configuration
    stopped: str | None = None  # why the search stopped early (hpo.budget)
    distilled: DistillOutcome | None = (
        None  # distill.enabled: the exported model is this pick (a student or the teacher)
    )

    @property
    def teacher_dir(self) -> str:
        """The search's chosen model: the refit's, else the best trial's (with distillation: the teacher)."""
        return self.refit.model_dir if self.refit is not None else str(self.best.model_dir or "")

    @property
    def model_dir(self) -> str:
        """The model that was exported: a distilled student, else the teacher."""
        return self.distilled.model_dir if self.distilled is not None else self.teacher_dir

    @property
    def student(self) -> ModelSummary | None:
        """The student that ships, if one does."""
        d = self.distilled
        return d.student if d is not None and d.chosen == "student" else None

    def chosen_config(self, cfg: RunConfig) -> RunConfig:
        """The shipped model's configuration: the best trial's, or the shipped student's."""
        return shipped_config(cfg, self.best.params, self.distilled)


def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(repo: Path) -> str:
    """HEAD of the repository at `repo` ('+dirty' if it has uncommitted changes), or 'unknown'."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _metrics(cfg: RunConfig, run: RunOutputs) -> Metrics:
    snap, quant = run.ctx.snapshot, run.quant
    baseline = trivial_baseline(
        cfg.task.type, load_split(snap, "train").labels, load_split(snap, "test").labels, cfg.task.labels
    )
    return Metrics(
        validation=run.student.validation if run.student is not None else run.best.metrics,
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
        gate_metric=quant.gate_metric,
        selection=f"the first recipe, in the configured order (fastest expected first), whose test {quant.gate_metric} is within"
        " max_accuracy_drop of FP32 ONNX, whose answers do not depend on batch-mates (max_batch_diff) and whose"
        f" batch-1 p50 beats FP32's; recipes are screened on {cfg.quantize.screen_samples} test texts first",
        graph_optimization=quant.graph_optimization,
        session_options=quant.session_options,
        search=quant.search,
        batch_invariance=quant.batch_invariance,
    )


def _lineage(run: RunOutputs) -> LineageInfo:
    # dataset -> trial checkpoints/models -> best model -> FP32 ONNX -> INT8 ONNX, each with its
    # file's SHA-256 and its parents' ids and SHA-256s (trainflow/release/lineage.py).
    nodes = build_lineage(
        snapshot=run.ctx.snapshot,
        records=run.records,
        best=run.best,
        fp32_onnx=Path(run.exported.onnx_path),
        int8_onnx=Path(run.quant.int8_path),
        refit_model_dir=Path(run.refit.model_dir) if run.refit is not None else None,
        student=run.student,
    )
    return LineageInfo(
        dataset_sha256=run.ctx.snapshot.sha256,
        study=run.ctx.study_name,
        trial=run.best.number,
        trial_model_dir=run.best.model_dir,
        nodes=nodes,
    )


def _onnx_info(cfg: RunConfig, run: RunOutputs) -> OnnxInfo:
    output = TaskHead(cfg.task.type, tuple(cfg.task.labels)).describe_output()
    # The session options every latency in the metadata was measured with; reuse them to reproduce.
    return OnnxInfo(opset=run.exported.opset, inputs=run.exported.inputs, output=output,
                    max_length=cfg.model.max_length, session_options=run.quant.session_options)  # fmt: skip


def hyperparameters(chosen: RunConfig) -> dict[str, object]:
    """What trained the chosen model: every training field and the model fields the search can set."""
    m = chosen.model
    return {**chosen.train.model_dump(), "base": m.base, "frozen_layers": m.frozen_layers, "max_length": m.max_length}


def _hpo_summary(cfg: RunConfig, run: RunOutputs) -> HpoSummary:
    best, records, limits = run.best, run.records, cfg.hpo.constraints
    constraints = None
    if limits is not None:
        constraints = {**limits.model_dump(), "best_latency_ms": best.latency_ms, "best_size_mb": best.size_mb,
                       "infeasible_trials": sum(r.feasible is False for r in records)}  # fmt: skip
    return HpoSummary(
        metric=cfg.hpo.metric,
        direction=cfg.hpo.direction,
        best_trial=best.number,
        n_trials=len(records),
        states={r.state: sum(x.state == r.state for x in records) for r in records},
        sampler=cfg.hpo.sampler,
        pruner=cfg.hpo.pruner_config.type,
        searched=list(cfg.hpo.search_space),
        stopped=run.stopped,
        constraints=constraints,
        refit=run.refit.to_dict() if run.refit is not None else None,
    )


def build_metadata(
    *, cfg: RunConfig, run: RunOutputs, pathspec: str, version: str, cost: CostSummary
) -> PackageMetadata:
    """The package's metadata.json (trainflow/release/metadata.py) from what the run's steps produced.
    `cfg` is the run's config; the chosen configuration is the best trial's (its searched fields set)."""
    chosen = run.chosen_config(cfg)
    base_dir = resolve_base_model(chosen.model.base)
    head = read_head(Path(run.exported.onnx_dir))
    return PackageMetadata(
        model_name=cfg.name,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        task=cfg.task.type,
        label_map={str(i): name for i, name in enumerate(cfg.task.labels)},
        cutpoints=head["cutpoints"],
        thresholds=head.get("thresholds"),
        scale=head.get("scale"),
        text_pair=cfg.data.text_pair_column is not None,
        onnx=_onnx_info(cfg, run),
        base_model=BaseModelInfo(
            name=chosen.model.base,
            sha256=checksum_model_dir(base_dir) if Path(base_dir).is_dir() else None,
            parameters=count_parameters(Path(run.model_dir)),
        ),
        hyperparameters=hyperparameters(chosen),
        hpo=_hpo_summary(cfg, run),
        metrics=_metrics(cfg, run),
        quantization=_quantization(cfg, run.quant),
        dataset=run.ctx.snapshot.summary(),
        lineage=_lineage(run),
        git_commit=git_commit(REPO),
        metaflow=RunRef(pathspec=pathspec, run_key=run.ctx.run_key),
        packages=package_versions(),
        config=cfg.public_dump(),
        cost=cost,
        serving=run.quant.serving,
        distillation=run.distilled.to_metadata() if run.distilled is not None else None,
    )
