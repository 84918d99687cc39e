"""Publishing a run's package into the registry, once per run.

`publish_package` assembles a package (trainflow/release/package.py) and moves it into place,
registered as staging, in one hold of the registry lock. `publish_run_package` is what the
publish step calls: safe to repeat after a kill (a `resume`), it removes the temporary folders
that killed attempts of this run left, and reuses (after verifying it) a package of this run
already in place whose inputs match this attempt's, so a run publishes once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from trainflow.core.config import RunConfig
from trainflow.core.errors import PublishError
from trainflow.core.faults import fault_window
from trainflow.core.io import sha256_file
from trainflow.core.layout import PACKAGE_TEMP_PREFIX
from trainflow.records.cost import CostSummary, RunCost, TaskTiming, price_run
from trainflow.release.assemble import RunOutputs, build_metadata
from trainflow.release.metadata import PackageMetadata, read_metadata
from trainflow.release.package import assemble_package, remove_stale_temps, verify_package
from trainflow.release.registry import ensure_registered, install, metadata_or_none
from trainflow.release.signing import key_path, signing_key_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageResult:
    path: str
    version: str
    files: dict[str, str]


@dataclass(frozen=True)
class Published:
    """The run's package, its metadata and its priced tasks (None when no timings were given)."""

    package: PackageResult
    meta: PackageMetadata
    run_cost: RunCost | None


def publish_package(
    *, artifact_root: Path, sources: list[Path], metadata: PackageMetadata, signing_key: Path | None = None
) -> PackageResult:
    """Assemble the package (signed with `signing_key`) and move it into place, registered as
    staging (one registry lock)."""
    assembled = assemble_package(artifact_root=artifact_root, sources=sources, metadata=metadata,
                                 signing_key=signing_key)  # fmt: skip
    install(artifact_root=artifact_root, assembled=assembled)
    return PackageResult(path=str(assembled.target), version=metadata.version, files=assembled.files)


def earlier_package(model_root: Path, run: RunOutputs) -> Path | None:
    """Remove the temporary package folders that killed attempts of this run left (never one a
    live attempt is writing: its lock is held); return a package of this run already in place
    whose metadata matches this attempt's inputs (best trial, FP32 ONNX digest), if any. A
    package of an earlier attempt made from other inputs is left alone: this attempt publishes
    its own version."""
    if not model_root.is_dir():
        return None
    for tmp in remove_stale_temps(model_root, f"{PACKAGE_TEMP_PREFIX}*-{run.ctx.run_key}-*"):
        log.warning("removed %s, a partial package left by an interrupted publish of this run", tmp)
    onnx_digest = sha256_file(run.exported.onnx_path)
    for folder in sorted((p for p in model_root.glob(f"*-{run.ctx.run_key}") if p.is_dir()), reverse=True):
        if folder.name.startswith("."):
            continue
        meta = metadata_or_none(folder)
        fp32 = meta.lineage.node("onnx_fp32") if meta else None
        if meta and meta.lineage.trial == run.best.number and fp32 and fp32.sha256 == onnx_digest:
            return folder
        log.warning("package %s of an earlier attempt was made from other inputs (best trial or ONNX); not reused",
                    folder)  # fmt: skip
    return None


def publish_run_package(
    *, cfg: RunConfig, run: RunOutputs, pathspec: str, version: str | None, timings: list[TaskTiming] | None
) -> Published:
    """The package this run published (an earlier attempt's, verified), or a new one; registered
    as staging either way. `timings` price the run into metadata.json `cost` (not measured
    without them)."""
    root = Path(cfg.publish.artifact_root).resolve()
    run_key = run.ctx.run_key
    earlier = earlier_package(root / cfg.name, run)
    if earlier is not None:
        meta = read_metadata(earlier)
        package = PackageResult(path=str(earlier), version=meta.version, files=verify_package(earlier))
        log.warning("package %s was published by an earlier attempt of this run; reusing it", earlier)
        measured = timings is not None and meta.cost.measured
        run_cost = price_run(cfg=cfg, timings=timings or [], run_key=run_key) if measured else None
    else:
        run_cost = price_run(cfg=cfg, timings=timings, run_key=run_key) if timings is not None else None
        cost = run_cost.summary() if run_cost else CostSummary.not_measured()
        version = version or f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{run_key}"
        meta = build_metadata(cfg=cfg, run=run, pathspec=pathspec, version=version, cost=cost)
        sources = [Path(run.exported.onnx_dir), Path(run.model_dir)]
        key = None
        if cfg.publish.signing_key:
            if problem := signing_key_problem(cfg.publish.signing_key, root):
                raise PublishError(problem)
            key = key_path(cfg.publish.signing_key, "signing key")
        package = publish_package(artifact_root=root, sources=sources, metadata=meta, signing_key=key)
    fault_window("publish-renamed")
    # A package renamed into place by an attempt killed before its registration is adopted now.
    ensure_registered(artifact_root=root, model_name=cfg.name, version=meta.version)
    return Published(package, meta, run_cost)
