"""What the stage tests share: the ordinal reference task searched by one trial, without Metaflow."""

from __future__ import annotations

from typing import Any

from stages.prepare import prepare_run
from stages.select import select_best
from tests.tiny import ROOT
from trainflow.core.config import RunConfig, parse_config_dict
from trainflow.data.dataset import load_split
from trainflow.search.worker import run_worker


def ordinal_search(tiny_cfg: dict, **sections: Any):  # noqa: ANN201 - (cfg, ctx, best, records)
    """150 drug reviews in 3 ordered levels, one trial by mae, run key "r1"; `sections` are set on
    the config too. Returns the config, the run context, the best trial and every trial's record."""
    tiny_cfg.update(
        task={"type": "ordinal", "labels": ["negative", "neutral", "positive"]},
        data={**tiny_cfg["data"], "path": str(ROOT / "data" / "drug_reviews.csv.gz"), "max_rows": 150},
        **sections,
    )
    tiny_cfg["hpo"].update(n_trials=1, n_workers=1, metric="mae")
    return one_trial(parse_config_dict(tiny_cfg))


def one_trial(cfg: RunConfig):  # noqa: ANN201 - (cfg, ctx, best, records)
    """Run key "r1": the config's search by worker 0 (its trial in the worker's own loop), then the
    best trial."""
    ctx = prepare_run(cfg=cfg, run_key="r1")
    run_worker(cfg=cfg, storage=ctx.storage, study_name=ctx.study_name, worker=0,
               train=load_split(ctx.snapshot, "train"), validation=load_split(ctx.snapshot, "validation"),
               work_dir=ctx.path, group="r1")  # fmt: skip
    best, records = select_best(cfg=cfg, ctx=ctx)
    return cfg, ctx, best, records
