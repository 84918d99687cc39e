"""Step `export`: ONNX export of the best model, then the PyTorch-vs-ONNX parity gate."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from pathlib import Path

from trainflow.convert.export import ExportOutcome, export_onnx
from trainflow.convert.parity import check_parity
from trainflow.core.config import RunConfig
from trainflow.core.diskspace import machine_limits
from trainflow.core.faults import fault_window
from trainflow.core.layout import ONNX_DIR
from trainflow.data.context import RunContext
from trainflow.data.dataset import load_split
from trainflow.records.tracking import lineage_ref, log_lineage_link
from trainflow.search.distill import DistillOutcome


def export_and_check(
    *, cfg: RunConfig, ctx: RunContext, model_dir: str, refitted: bool = False, distilled: DistillOutcome | None = None
) -> ExportOutcome:
    """ONNX export, then the parity gate on held-out test samples (raises ParityError). `cfg` is
    the chosen configuration (its base model and max_length); `refitted`: `model_dir` is the
    refit of the best trial, not the trial's own model; `distilled`: the distillation that chose
    `model_dir` (a student, or the teacher)."""
    # A folder per attempt: a resumed export never overwrites the ONNX file that an earlier
    # attempt's package (and its lineage) points to.
    onnx_dir = ctx.path / ONNX_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    with machine_limits("export", "use a machine with more memory or a smaller model.max_length"):
        result = export_onnx(
            model_dir=Path(model_dir), out_dir=onnx_dir, export=cfg.export, max_length=cfg.model.max_length
        )
        test = load_split(ctx.snapshot, "test")
        parity = check_parity(
            model_dir=Path(model_dir),
            onnx_path=Path(result.onnx_path),
            texts=test.inputs[: cfg.export.parity_samples],
            max_length=cfg.model.max_length,
            atol=cfg.export.parity_atol,
        )
    if distilled is not None and distilled.chosen == "student" and distilled.student is not None:
        best_ref = lineage_ref(cfg.name, "student-model", ctx.run_key, distilled.student.trial)
    else:
        best_ref = lineage_ref(cfg.name, "refit-model" if refitted else "best-model", ctx.run_key)
    log_lineage_link(cfg=cfg, run_key=ctx.run_key, directory=ctx.path, job_type="export", kind="onnx-fp32",
                     path=result.onnx_path, parents=(best_ref,), opset=result.opset, parity=asdict(parity))  # fmt: skip
    fault_window("export")
    return ExportOutcome(str(onnx_dir), result.onnx_path, result.opset, result.inputs, parity)
