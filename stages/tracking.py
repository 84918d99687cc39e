"""Weights & Biases logging for one trial: offline unless a key is configured.

Mode resolution (`tracking.wandb_mode`): `auto` means online when WANDB_API_KEY is set in the
environment, offline otherwise; `offline`, `online` and `disabled` are taken as given. Keys come
only from the environment; nothing here writes them anywhere.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stages.config import TrackingConfig


def resolve_mode(tracking: TrackingConfig) -> str:
    if tracking.wandb_mode != "auto":
        return tracking.wandb_mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def system_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class TrialLogger:
    """Thin wrapper so stages can log without caring whether W&B is on."""

    def __init__(self, run: Any | None) -> None:
        self.run = run

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)


@contextmanager
def trial_run(
    *,
    tracking: TrackingConfig,
    run_id: str,
    group: str,
    name: str,
    config: dict[str, Any],
    directory: Path,
) -> Iterator[TrialLogger]:
    """One W&B run per trial, grouped by the Metaflow run. `run_id` is fixed by the caller so
    that a retried or resumed trial continues the same W&B run (resume="allow")."""
    mode = resolve_mode(tracking)
    if mode == "disabled":
        yield TrialLogger(None)
        return
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=tracking.wandb_project,
        entity=tracking.wandb_entity,
        group=group,
        name=name,
        id=run_id,
        resume="allow",
        dir=str(directory),
        mode=mode,  # type: ignore[arg-type]
        config={**config, "system": system_info()},
        reinit="finish_previous",
        settings=wandb.Settings(silent=True, console="off"),
    )
    try:
        yield TrialLogger(run)
    except BaseException:
        run.finish(exit_code=1)
        raise
    else:
        run.finish()
