"""`metadata.json` of a deployment package as one typed model.

Written by the publish step (`PackageMetadata.write`), read by the registry, the CLI, the cards,
the run summary and the package loader (`read_metadata`). Schema versions:

  1  packages published before this model existed (no `schema_version` key; the INT8 recipe's
     fields were spread into `quantization`). They are read, with the recipe gathered into
     `quantization.recipe`.
  2  typed metadata; read with `serving` empty (no thread sweep was recorded then).
  3  this model: `serving` holds the primary model (int8 or fp32), the latencies measured at each
     thread count and batch size on the machine that built the package, and the best settings.

A file with a newer `schema_version` than this code knows, or one that does not match the
model, raises `MetadataError` naming the file and the version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainflow.convert.outcome import RecipeOutcome
from trainflow.core.errors import MetadataError
from trainflow.core.io import atomic_write_text
from trainflow.core.layout import METADATA, ONNX_FP32, ONNX_INT8
from trainflow.data.dataset import DatasetSummary
from trainflow.records.cost import CostSummary
from trainflow.tasks.task import TaskHead

SCHEMA_VERSION = 3


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latency(_Model):
    p50_ms: float
    p95_ms: float
    n: int


class ParityInfo(_Model):
    n_samples: int
    max_abs_diff: float
    mean_abs_diff: float
    prediction_agreement: float
    atol: float
    error_histogram: list[tuple[int, int]] = Field(default_factory=list)


class SizeBytes(_Model):
    fp32: int
    int8: int


class Metrics(_Model):
    """Metric dicts hold the task's metrics (trainflow/tasks/task.py TASK_METRICS; loss on
    validation); `test_majority_baseline` is the trivial predictor's (majority class, per-label
    majority, training mean); `int8_accuracy_drop` is the drop of the gate metric."""

    validation: dict[str, float]
    test_fp32_onnx: dict[str, float]
    test_int8_onnx: dict[str, float]
    test_majority_baseline: dict[str, float]
    int8_accuracy_drop: float
    parity: ParityInfo
    latency_batch1_fp32: Latency
    latency_batch1_int8: Latency
    size_bytes: SizeBytes

    def test_metric(self, split: Literal["fp32", "int8"], metric: str) -> float | None:
        values = self.test_fp32_onnx if split == "fp32" else self.test_int8_onnx
        return values.get(metric)


class OnnxInfo(_Model):
    opset: int
    inputs: list[str]
    output: str
    max_length: int
    session_options: dict[str, Any]


class BaseModelInfo(_Model):
    name: str
    sha256: str | None
    parameters: int


class HpoSummary(_Model):
    metric: str
    direction: Literal["maximize", "minimize"]
    best_trial: int
    n_trials: int
    states: dict[str, int]
    sampler: str | None = None  # None: a package from before the declared search space (TPE)
    pruner: str | None = None
    searched: list[str] = Field(default_factory=list)  # the config fields the search set
    stopped: str | None = None  # why the search stopped early (hpo.budget), if it did
    constraints: dict[str, Any] | None = None  # hpo.constraints and the best trial's measured cost
    refit: dict[str, Any] | None = None  # hpo.refit: the refitted model (trainflow/search/refit.py)


class QuantizationInfo(_Model):
    recipe: dict[str, Any]  # the chosen recipe's settings and what was quantized
    node_counts: dict[str, int]
    chosen_recipe: str
    max_accuracy_drop: float
    selection: str
    graph_optimization: dict[str, Any]
    session_options: dict[str, Any]
    search: list[RecipeOutcome]
    # The chosen INT8 model's test texts scored alone vs in batches (empty in older packages).
    batch_invariance: dict[str, Any] = Field(default_factory=dict)
    gate_metric: str = "accuracy"  # the test metric held within max_accuracy_drop (older packages: accuracy)


class ParentRef(_Model):
    id: str
    sha256: str


LineageKind = Literal[
    "dataset", "dataset_split", "trial_checkpoint", "trial_model", "refit_model",
    "student_checkpoint", "student_model", "best_model", "onnx_fp32", "onnx_int8",
]  # fmt: skip


class LineageNode(_Model):
    """One artifact of a package's lineage: the file it names, that file's SHA-256, and its
    parents' ids and SHA-256s (trainflow/release/lineage.py builds and checks them)."""

    id: str
    kind: LineageKind
    path: str
    sha256: str
    parents: list[ParentRef] = Field(default_factory=list)
    package_file: str | None = None  # the node's copy inside the package, if it has one
    trial: int | None = None

    def ref(self) -> ParentRef:
        return ParentRef(id=self.id, sha256=self.sha256)


class LineageInfo(_Model):
    dataset_sha256: str
    study: str
    trial: int
    trial_model_dir: str | None
    nodes: list[LineageNode]

    def node(self, kind: LineageKind) -> LineageNode | None:
        """The first node of `kind`, or None."""
        return next((n for n in self.nodes if n.kind == kind), None)


class RunRef(_Model):
    pathspec: str
    run_key: str


class PackageMetadata(_Model):
    schema_version: int = SCHEMA_VERSION
    model_name: str
    version: str
    created_at: str
    task: Literal["classification", "ordinal", "multilabel", "regression"]
    label_map: dict[str, str]
    cutpoints: list[float] | None
    thresholds: list[float] | None = None  # multilabel: per-label decision thresholds, in label order
    scale: list[float] | None = None  # regression: [mean, std]; value = output * std + mean
    text_pair: bool = False  # the model reads (text, pair text) pairs
    onnx: OnnxInfo
    base_model: BaseModelInfo
    hyperparameters: dict[str, Any]
    hpo: HpoSummary
    metrics: Metrics
    quantization: QuantizationInfo
    dataset: DatasetSummary
    lineage: LineageInfo
    git_commit: str
    metaflow: RunRef
    packages: dict[str, str]
    config: dict[str, Any]
    cost: CostSummary
    serving: dict[str, Any] = Field(default_factory=dict)
    # distill.enabled: teacher and student side by side, which shipped and why (trainflow/search/distill.py)
    distillation: dict[str, Any] | None = None

    @property
    def primary_file(self) -> str:
        """The model file the package serves by default."""
        return ONNX_FP32 if self.serving.get("primary") == "fp32" else ONNX_INT8

    @property
    def labels(self) -> list[str]:
        return [self.label_map[str(i)] for i in range(len(self.label_map))]

    def head(self) -> TaskHead:
        """What the model's outputs mean (trainflow/tasks/task.py)."""
        return TaskHead.from_dict({"task": self.task, "labels": self.labels, "cutpoints": self.cutpoints,
                                   "thresholds": self.thresholds, "scale": self.scale})  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / METADATA
        atomic_write_text(path, self.to_json())
        return path


def _upgrade_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 spread the chosen recipe's fields into `quantization`; gather them."""
    known = set(QuantizationInfo.model_fields) - {"recipe"}
    quant = dict(raw.get("quantization") or {})
    recipe = {k: quant.pop(k) for k in list(quant) if k not in known}
    return {**raw, "schema_version": SCHEMA_VERSION, "quantization": {**quant, "recipe": recipe}}


def parse_metadata(raw: Any, source: str) -> PackageMetadata:
    """Validate a parsed metadata.json (any supported schema). Raises MetadataError."""
    if not isinstance(raw, dict):
        raise MetadataError(f"{source}: not a JSON object")
    version = raw.get("schema_version", 1)
    if not isinstance(version, int) or version < 1 or version > SCHEMA_VERSION:
        raise MetadataError(
            f"{source}: metadata schema version {version!r} is not supported (this trainflow reads 1 to"
            f" {SCHEMA_VERSION}); upgrade trainflow to read it"
        )
    data = _upgrade_v1(raw) if version == 1 else {**raw, "schema_version": SCHEMA_VERSION}
    try:
        return PackageMetadata.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()[:5])
        raise MetadataError(
            f"{source} (metadata schema version {version}) does not match the schema: {problems}"
        ) from None


def read_metadata(package: Path | str) -> PackageMetadata:
    """The typed metadata of a package folder. Raises MetadataError if missing or unreadable."""
    path = Path(package) / METADATA
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetadataError(f"{path}: no such file; not a trainflow package") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetadataError(f"{path}: unreadable ({err})") from None
    return parse_metadata(raw, str(path))
