"""The pre-flight check: the config, the data and the base model, everything a run checks before it
trains, in seconds and without writing anything (`trainflow check --config FILE`; the flow's
`start` runs the same functions before it snapshots the data). `check_run` (config and data)
imports no torch; `check_model` builds the model's skeleton without its weights
(trainflow/training/preflight.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainflow.core.config import RunConfig, SearchParam, expand_env
from trainflow.core.errors import ConfigError, ModelLoadError
from trainflow.data.dataset import Inspection, inspect_dataset, label_histogram
from trainflow.release.signing import signing_key_problem
from trainflow.training.base_model import resolve_base_model
from trainflow.training.preflight import ModelReport, inspect_model


def check_environment(cfg: RunConfig) -> str:
    """What the run needs besides the data: the base model is found, `${VAR}`s of hpo.storage are
    set. Returns the resolved base model. Raises ConfigError or ModelLoadError."""
    if cfg.hpo.storage:
        try:
            expand_env(cfg.hpo.storage)
        except KeyError as err:
            raise ConfigError("hpo.storage", [str(err.args[0])]) from None
    if cfg.publish.signing_key and (problem := signing_key_problem(cfg.publish.signing_key,
                                                                    Path(cfg.publish.artifact_root))):  # fmt: skip
        raise ConfigError("publish.signing_key", [problem])
    return resolve_base_model(cfg.model.base)


@dataclass(frozen=True)
class CheckReport:
    cfg: RunConfig
    base_model: str
    data: Inspection

    def lines(self) -> list[str]:
        task, names = self.cfg.task, self.cfg.task.labels
        if task.type in ("classification", "ordinal"):
            labels = self.data.frame["label"].value_counts().sort_index()
            histogram = ", ".join(f"{names[int(k)]} {int(v)}" for k, v in labels.items())
        else:  # label sets: rows per label and rows with none; values: rows per fifth of the range
            histogram = ", ".join(
                f"{k} {v}" for k, v in label_histogram(task, self.data.frame["label"].tolist()).items()
            )
        pair = (
            f", text pairs ({self.cfg.data.text_column}, {self.cfg.data.text_pair_column})"
            if self.cfg.data.text_pair_column
            else ""
        )
        return [
            f"config {self.cfg.name}: {task.type}, labels {names}{pair}",
            f"data {self.data.path}: {len(self.data.frame)} rows, version {self.data.version}",
            f"  splits {self.data.counts} (calibration {min(self.cfg.data.calibration_size, self.data.counts['train'])})",
            f"  {'values' if task.type == 'regression' else 'labels'} {histogram}",
            f"base model {self.cfg.model.base} ({self.base_model})",
            f"runs under {Path(self.cfg.publish.run_root).resolve()}, packages under"
            f" {Path(self.cfg.publish.artifact_root).resolve()}",
        ]


def check_run(cfg: RunConfig) -> CheckReport:
    """Raises the first error (ConfigError, DatasetError with every data problem, ModelLoadError)."""
    base = check_environment(cfg)
    return CheckReport(cfg, base, inspect_dataset(data=cfg.data, task=cfg.task, seed=cfg.seed))


def check_model(cfg: RunConfig) -> list[ModelReport]:
    """Every base model the run may train can be fine-tuned as configured: config, weights,
    tokenizer, family anatomy, freezing and head (no weights are loaded); with `model.base`
    searched, each choice, and with `model.frozen_layers` or `model.max_length` searched, the
    largest value against each base; with `distill.enabled`, each student depth below the layers of
    every base the teacher may have, and each of `distill.student_bases` as a student. Raises
    ModelLoadError listing every problem."""
    space = cfg.hpo.search_space
    bases = list(space["model.base"].choices or []) if "model.base" in space else [cfg.model.base]
    frozen = _largest(space.get("model.frozen_layers"))
    length = _largest(space.get("model.max_length"))
    # A searched field is checked at its largest value below, not at its (unused) config value.
    fixed = {"frozen_layers": 0 if frozen is not None else cfg.model.frozen_layers,
             "max_length": min(cfg.model.max_length, length) if length is not None else cfg.model.max_length}  # fmt: skip
    reports, problems = [], []
    for base in bases:
        where = f"hpo.search_space.model.base choice {base!r}: " if "model.base" in space else ""
        try:
            report = inspect_model(model=cfg.model.model_copy(update={"base": str(base), **fixed}), task=cfg.task,
                                   pairs=cfg.data.text_pair_column is not None)  # fmt: skip
        except ModelLoadError as err:
            problems.append(where + str(err))
            continue
        reports.append(report)
        if frozen and not report.separable_layers:
            problems.append(f"hpo.search_space.model.frozen_layers: {base} cannot freeze its lowest layers alone (they"
                            " share their weights); search it only over bases whose layers are separate")  # fmt: skip
        elif frozen is not None and frozen > report.n_layers:
            problems.append(f"hpo.search_space.model.frozen_layers: {frozen} is above the {report.n_layers} layers of"
                            f" {base}; search at most {report.n_layers}")  # fmt: skip
        if length is not None and report.positions and length > report.positions:
            problems.append(f"hpo.search_space.model.max_length: {length} exceeds the {report.positions} positions of"
                            f" {base}; search at most {report.positions}")  # fmt: skip
        deep = [n for n in cfg.distill.student_layers if n >= report.n_layers] if cfg.distill.enabled else []
        if deep:
            problems.append(f"distill.student_layers: {deep} must be below the {report.n_layers} layers of the teacher"
                            f" {base}; list smaller depths")  # fmt: skip
    if cfg.distill.enabled:
        problems += _student_base_problems(cfg, fixed["max_length"] if length is None else length)
    if problems:
        raise ModelLoadError("\n".join(problems))
    return reports


def _student_base_problems(cfg: RunConfig, max_length: int) -> list[str]:
    """Each of `distill.student_bases` loads as a student of the task (no weights loaded) and takes
    texts as long as the teacher's (`max_length`, the largest the search may give it)."""
    problems = []
    for base in cfg.distill.student_bases:
        where = f"distill.student_bases {base!r}: "
        try:
            report = inspect_model(model=cfg.model.model_copy(update={"base": base, "frozen_layers": 0}), task=cfg.task,
                                   pairs=cfg.data.text_pair_column is not None)  # fmt: skip
        except ModelLoadError as err:
            problems.append(where + str(err))
            continue
        if report.positions and max_length > report.positions:
            problems.append(where + f"its {report.positions} positions are fewer than the teacher's model.max_length"
                            f" {max_length}; choose a base with more or a smaller model.max_length")  # fmt: skip
    return problems


def _largest(spec: SearchParam | None) -> int | None:
    if spec is None:
        return None
    return int(max(spec.choices)) if spec.choices is not None else int(spec.high)  # type: ignore[arg-type, type-var]
