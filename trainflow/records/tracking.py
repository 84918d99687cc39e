"""Weights & Biases logging: one run per trial, plus artifacts with explicit lineage.

Mode resolution (`tracking.wandb_mode`): `auto` means online when WANDB_API_KEY is set in the
environment, offline otherwise; `offline`, `online` and `disabled` are taken as given. Keys come
only from the environment; nothing here writes them anywhere.

Lineage: dataset snapshot -> trial model -> best model -> FP32 ONNX -> INT8 package. Each link is
an artifact logged by the run that made it, named `<model>-<kind>` with the alias `run-<run key>`
so a child can name its parent before anything is uploaded. Online, the child's run declares its
parents with `use_artifact`; offline that call raises ("Cannot use artifact when in offline mode",
https://github.com/wandb/wandb/issues/9631), so the parents are always also written into the
artifact's metadata (`parents`) and description, where they survive `wandb sync`.
Files are added as `file://` references (path + checksum, no copy), which suits a cluster whose
login node, where `wandb sync` runs, sees the same filesystem.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainflow.core.config import RunConfig, TrackingConfig


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
    """Thin wrapper so stages can log without caring whether W&B is on.

    It also keeps every logged value in `points` (one dict per step, `{"step": s, **values}`),
    with or without W&B, for the training-curve report. Logging a step at or before the last one
    (a resumed attempt replaying from its checkpoint) first drops the points from that step on.
    """

    def __init__(self, run: Any | None, points: list[dict[str, float]] | None = None) -> None:
        self.run = run
        self.points: list[dict[str, float]] = [dict(p) for p in points or []]

    def log(self, step: int, values: dict[str, float]) -> None:
        last = self.points[-1]["step"] if self.points else None
        if last is not None and step == last:
            self.points[-1].update(values)
        else:
            if last is not None and step < last:
                self.points = [p for p in self.points if p["step"] < step]
            self.points.append({"step": step, **values})
        if self.run is not None:
            self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def log_artifact(self, artifact: LineageArtifact) -> str | None:
        """Log `artifact` from this run; its reference, or None when W&B is off."""
        return None if self.run is None else _log_lineage(self.run, artifact)


def _start_run(tracking: TrackingConfig, mode: str, directory: Path, **run: Any) -> Any:
    """wandb.init in `directory` with the project's settings; a fixed `id` is resumed ("allow"),
    so a retried trial or step continues its own run."""
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=tracking.wandb_project,
        entity=tracking.wandb_entity,
        resume="allow",
        dir=str(directory),
        mode=mode,  # type: ignore[arg-type]
        reinit="finish_previous",
        settings=wandb.Settings(silent=True, console="off"),
        **run,
    )


@contextmanager
def trial_run(
    *,
    tracking: TrackingConfig,
    run_id: str,
    group: str,
    name: str,
    config: dict[str, Any],
    directory: Path,
    points: list[dict[str, float]] | None = None,
) -> Iterator[TrialLogger]:
    """One W&B run per trial, grouped by the Metaflow run. `run_id` is fixed by the caller so
    that a retried or resumed trial continues the same W&B run (resume="allow"). `points` seeds
    the logger's curve (what an earlier attempt of the trial recorded)."""
    mode = resolve_mode(tracking)
    if mode == "disabled":
        yield TrialLogger(None, points)
        return
    run = _start_run(tracking, mode, directory, group=group, name=name, id=run_id,
                     config={**config, "system": system_info()})  # fmt: skip
    try:
        yield TrialLogger(run, points)
    except BaseException:
        run.finish(exit_code=1)
        raise
    else:
        run.finish()


# --- artifact lineage -------------------------------------------------------------------------

# The chain, in order: W&B artifact type of each link.
LINEAGE_TYPES = {
    "dataset": "dataset",
    "trial-model": "model",
    "best-model": "model",
    "refit-model": "model",
    "teacher-model": "model",
    "student-model": "model",
    "onnx-fp32": "onnx",
    "int8-package": "package",
}


def lineage_ref(model_name: str, kind: str, run_key: str, trial: int | None = None) -> str:
    """`name:alias` of a lineage artifact, known before it is logged (so children can name it)."""
    if kind not in LINEAGE_TYPES:
        raise ValueError(f"unknown lineage kind {kind!r}; expected one of {sorted(LINEAGE_TYPES)}")
    alias = f"run-{run_key}" + (f"-trial-{trial}" if trial is not None else "")
    return f"{model_name}-{kind}:{alias}"


@dataclass(frozen=True)
class LineageArtifact:
    """One link of the chain: what to log (`path`, a file or folder) and its parents' references."""

    ref: str
    kind: str
    path: str
    parents: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.ref.split(":", 1)[0]

    @property
    def alias(self) -> str:
        return self.ref.split(":", 1)[1]


def lineage_artifact(
    *,
    model_name: str,
    kind: str,
    run_key: str,
    path: Path | str,
    parents: tuple[str, ...] = (),
    trial: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> LineageArtifact:
    return LineageArtifact(
        ref=lineage_ref(model_name, kind, run_key, trial),
        kind=kind,
        path=str(Path(path).resolve()),
        parents=tuple(parents),
        metadata={**(metadata or {}), "run_key": run_key},
    )


def _log_lineage(run: Any, artifact: LineageArtifact) -> str:
    import wandb

    parents = list(artifact.parents)
    art = wandb.Artifact(
        artifact.name,
        type=LINEAGE_TYPES[artifact.kind],
        description=f"{artifact.kind} of run {artifact.metadata['run_key']}; parents: {', '.join(parents) or 'none'}",
        metadata={**artifact.metadata, "kind": artifact.kind, "parents": parents, "path": artifact.path},
    )
    # A reference records path + checksum of every file without copying it.
    art.add_reference(Path(artifact.path).as_uri(), checksum=True)
    if not run.offline:  # offline use_artifact raises (wandb#9631): metadata carries the parents
        for parent in parents:
            run.use_artifact(parent)
    run.log_artifact(art, aliases=[artifact.alias])
    return artifact.ref


def log_lineage(
    *, tracking: TrackingConfig, artifact: LineageArtifact, group: str, job_type: str, directory: Path
) -> str | None:
    """Log `artifact` from a short W&B run of its own (`job_type` names the step that made it).

    The run id is fixed (`<group>-<job_type>`), so a retried step continues the same run.
    Returns the artifact's reference, or None when W&B is disabled."""
    mode = resolve_mode(tracking)
    if mode == "disabled":
        return None
    run = _start_run(tracking, mode, directory, group=group, job_type=job_type, name=job_type, id=f"{group}-{job_type}")
    try:
        ref = _log_lineage(run, artifact)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    return ref


def log_lineage_link(
    *,
    cfg: RunConfig,
    run_key: str,
    directory: Path,
    job_type: str,
    kind: str,
    path: str | Path,
    parents: tuple[str, ...] = (),
    **metadata: Any,
) -> str | None:
    """Log one link of the run's artifact chain (`kind` made by step `job_type`) from a short W&B
    run of its own; the reference, or None when W&B is disabled."""
    artifact = lineage_artifact(
        model_name=cfg.name, kind=kind, run_key=run_key, path=path, parents=parents, metadata=metadata
    )
    return log_lineage(tracking=cfg.tracking, artifact=artifact, group=run_key, job_type=job_type, directory=directory)
