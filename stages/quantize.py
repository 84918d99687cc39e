"""Step `quantize`: the INT8 recipe search behind the accuracy gate."""

from __future__ import annotations

from pathlib import Path

from trainflow.convert.export import ExportOutcome
from trainflow.convert.onnx_model import FolderTokenizer
from trainflow.convert.quantize import QuantizeResult, quantize_and_gate
from trainflow.core.config import RunConfig
from trainflow.core.diskspace import machine_limits
from trainflow.core.faults import fault_window
from trainflow.data.context import RunContext
from trainflow.data.dataset import load_split
from trainflow.tasks.heads import read_head
from trainflow.tasks.task import TaskHead


def quantize_model(*, cfg: RunConfig, ctx: RunContext, exported: ExportOutcome) -> QuantizeResult:
    """INT8 recipe search and the accuracy gate (raises QuantizationAccuracyError if no recipe passes)."""
    tokenizer = FolderTokenizer(Path(exported.onnx_dir))
    head = read_head(Path(exported.onnx_dir))
    fix = "use a machine with more memory, or quantize.parallel: 1 and fewer quantize.latency_samples"
    with machine_limits("quantize (the INT8 search)", fix):
        result = _search(cfg, ctx, exported, tokenizer, head)
    fault_window("quantize")
    return result


def _search(cfg: RunConfig, ctx: RunContext, exported: ExportOutcome, tokenizer: FolderTokenizer, head: dict):
    return quantize_and_gate(
        fp32_path=Path(exported.onnx_path),
        tokenizer=tokenizer,
        task=cfg.task.type,
        n_classes=len(cfg.task.labels),
        cutpoints=head["cutpoints"],
        head=TaskHead.from_dict(head),
        calibration=load_split(ctx.snapshot, "calibration"),
        test=load_split(ctx.snapshot, "test"),
        max_length=cfg.model.max_length,
        q=cfg.quantize,
    )
