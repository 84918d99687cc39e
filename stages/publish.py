"""Step `publish`: the package (written atomically, registered as staging), its lineage link in
W&B, and the run's Parquet records."""

from __future__ import annotations

from pathlib import Path

from trainflow.convert.export import ExportOutcome
from trainflow.convert.quantize import QuantizeResult
from trainflow.core.config import RunConfig
from trainflow.data.context import RunContext
from trainflow.records.cost import TaskTiming
from trainflow.records.tracking import lineage_ref, log_lineage_link
from trainflow.release.assemble import RunOutputs
from trainflow.release.publish import PackageResult, publish_run_package
from trainflow.release.run_records import write_run_records
from trainflow.search.distill import DistillOutcome
from trainflow.search.refit import RefitResult
from trainflow.search.study import TrialRecord


def publish_run(
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
    resumed_as: str | None = None,
    refit: RefitResult | None = None,
    stopped: str | None = None,
    distilled: DistillOutcome | None = None,
) -> PackageResult:
    """Write the package atomically, register it as `staging`, and write the run, trial,
    package, lineage and cost Parquet records.

    `timings` are the run's tasks so far (the flow reads them with `flows/trainflow_timings.py`);
    they are priced with `cfg.cost` into metadata.json `cost` and the `runs`/`costs` records.
    Without them the cost is recorded as not measured. `resumed_as` is this run's id when it is a
    `resume` (the records stay the resumed run's). `refit`: the exported model is this refit of
    the best trial's configuration; `stopped`: why the search stopped early; `distilled`: the
    distillation that chose the exported model (a student, or the teacher).

    Safe to repeat (a `resume` after the step was killed): the hidden temporary folder a killed
    attempt of this run left is removed, and a package this run already published (renamed into
    place, records perhaps not yet written) is verified and reused, so a run publishes once."""
    run = RunOutputs(ctx, best, records, exported, quant, refit=refit, stopped=stopped, distilled=distilled)
    done = publish_run_package(cfg=cfg, run=run, pathspec=pathspec, version=version, timings=timings)
    log_lineage_link(cfg=cfg, run_key=ctx.run_key, directory=ctx.path, job_type="publish", kind="int8-package",
                     path=done.package.path, parents=(lineage_ref(cfg.name, "onnx-fp32", ctx.run_key),),
                     version=done.meta.version, recipe=quant.chosen, int8_accuracy=quant.int8_metrics.get("accuracy"),
                     accuracy_drop=quant.accuracy_drop)  # fmt: skip
    write_run_records(artifact_root=Path(cfg.publish.artifact_root).resolve(), cfg=cfg, run=run, meta=done.meta,
                      path=done.package.path, run_cost=done.run_cost, pathspec=pathspec,
                      resumed_as=resumed_as)  # fmt: skip
    return done.package
