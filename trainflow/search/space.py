"""The declared search space: which config fields a trial sets, and to what.

`hpo.search_space` maps dotted config paths (`train.learning_rate`, `model.base`, ...) to a range
(`low`, `high`, `log`, `step`) or `choices`; the config's own checks have made sure each value it
can produce is valid for its field. A trial's parameters are named by their paths, and a trial's
configuration is the run's with those fields set (`trial_config`), so a field that is not searched
keeps its config value.
"""

from __future__ import annotations

from typing import Any

import optuna

from trainflow.core.config import RunConfig, SearchParam
from trainflow.training.hparams import Hyperparams


def _is_int(cfg: RunConfig, path: str) -> bool:
    group, name = path.split(".")
    annotation = str(type(getattr(cfg, group)).model_fields[name].annotation)
    return "int" in annotation and "float" not in annotation


def sample(trial: optuna.Trial, cfg: RunConfig) -> dict[str, Any]:
    """Ask the trial for every searched field, in the order the config declares them (a continued
    trial gets its stored values back)."""
    values: dict[str, Any] = {}
    for path, spec in cfg.hpo.search_space.items():
        if spec.choices is not None:
            values[path] = trial.suggest_categorical(path, spec.choices)
        elif _is_int(cfg, path):
            step = int(spec.step or 1)
            values[path] = trial.suggest_int(path, int(spec.low), int(spec.high), step=step, log=spec.log)  # type: ignore[arg-type]
        else:
            values[path] = trial.suggest_float(path, float(spec.low), float(spec.high), step=spec.step, log=spec.log)  # type: ignore[arg-type]
    return values


def apply(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """`cfg` with the fields named by dotted paths set to `values` (validated: a value the field
    refuses raises pydantic's ValidationError)."""
    groups: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        group, name = path.split(".")
        groups.setdefault(group, {})[name] = value
    updates = {
        g: type(getattr(cfg, g)).model_validate({**getattr(cfg, g).model_dump(), **v}) for g, v in groups.items()
    }
    return cfg.model_copy(update=updates)


def trial_config(trial: optuna.Trial, cfg: RunConfig) -> RunConfig:
    """The run's config with this trial's values set."""
    return apply(cfg, sample(trial, cfg))


def hyperparams(cfg: RunConfig) -> Hyperparams:
    """What the optimizer and the schedule take from a (trial's) config."""
    t = cfg.train
    return Hyperparams(learning_rate=t.learning_rate, weight_decay=t.weight_decay, warmup_ratio=t.warmup_ratio,
                       batch_size=t.batch_size, max_steps=t.max_steps)  # fmt: skip


def grid(cfg: RunConfig) -> dict[str, list[Any]]:
    """The grid sampler's space: every value of every searched field (choices, integer ranges)."""
    out: dict[str, list[Any]] = {}
    for path, spec in cfg.hpo.search_space.items():
        if spec.choices is not None:
            out[path] = list(spec.choices)
        else:
            out[path] = list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))  # type: ignore[arg-type]
    return out


def grid_size(cfg: RunConfig) -> int:
    size = 1
    for values in grid(cfg).values():
        size *= len(values)
    return size


def _within(spec: SearchParam, value: Any) -> bool:
    if spec.choices is not None:
        return value in spec.choices
    return isinstance(value, int | float) and float(spec.low) <= float(value) <= float(spec.high)  # type: ignore[arg-type]


def misfit(cfg: RunConfig, params: dict[str, Any]) -> str | None:
    """Why an earlier trial's parameters cannot be tried again in this search space, or None."""
    for path, spec in cfg.hpo.search_space.items():
        if path not in params:
            return f"it has no value for {path}"
        if not _within(spec, params[path]):
            return f"its {path} {params[path]!r} is outside this search space"
    extra = sorted(set(params) - set(cfg.hpo.search_space))
    return f"it set {', '.join(extra)}, which this search does not" if extra else None
