"""The pre-flight check: the config, the data and the base model, everything a run checks before it
trains, in seconds and without writing anything (`trainflow check --config FILE`; the flow's
`start` runs the same functions before it snapshots the data). `check_run` (config and data)
imports no torch; `check_model` builds the model's skeleton without its weights
(trainflow/training/preflight.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainflow.core.config import RunConfig, expand_env
from trainflow.core.errors import ConfigError
from trainflow.data.dataset import Inspection, inspect_dataset
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
        labels = self.data.frame["label"].value_counts().sort_index()
        names = self.cfg.task.labels
        histogram = ", ".join(f"{names[int(k)]} {int(v)}" for k, v in labels.items())
        return [
            f"config {self.cfg.name}: {self.cfg.task.type}, labels {names}",
            f"data {self.data.path}: {len(self.data.frame)} rows, version {self.data.version}",
            f"  splits {self.data.counts} (calibration {min(self.cfg.data.calibration_size, self.data.counts['train'])})",
            f"  labels {histogram}",
            f"base model {self.cfg.model.base} ({self.base_model})",
            f"runs under {Path(self.cfg.publish.run_root).resolve()}, packages under"
            f" {Path(self.cfg.publish.artifact_root).resolve()}",
        ]


def check_run(cfg: RunConfig) -> CheckReport:
    """Raises the first error (ConfigError, DatasetError with every data problem, ModelLoadError)."""
    base = check_environment(cfg)
    return CheckReport(cfg, base, inspect_dataset(data=cfg.data, task=cfg.task, seed=cfg.seed))


def check_model(cfg: RunConfig) -> ModelReport:
    """The base model can be fine-tuned as configured: config, weights, tokenizer, family anatomy,
    freezing and head (no weights are loaded). Raises ModelLoadError listing every problem."""
    return inspect_model(model=cfg.model, task=cfg.task)
