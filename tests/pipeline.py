"""The flow's steps chained without Metaflow up to a package's inputs: one search, then the best
model exported and quantized (what the loader, serving and secrets tests publish from)."""

from __future__ import annotations

from typing import Any

from stages.export import export_and_check
from stages.hpo_worker import run_trials
from stages.prepare import prepare_run
from stages.quantize import quantize_model
from stages.select import select_best
from trainflow.core.config import RunConfig


def searched_and_quantized(cfg: RunConfig):  # noqa: ANN201 - (ctx, best, records, exported, quant)
    """Run key "r1": the search (worker 0), its best trial exported and quantized."""
    ctx = prepare_run(cfg=cfg, run_key="r1")
    run_trials(cfg=cfg, ctx=ctx, worker=0)
    best, records = select_best(cfg=cfg, ctx=ctx)
    exported = export_and_check(cfg=cfg, ctx=ctx, model_dir=best.model_dir)
    quant: Any = quantize_model(cfg=cfg, ctx=ctx, exported=exported)
    return ctx, best, records, exported, quant
