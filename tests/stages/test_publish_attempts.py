"""A repeated publish of one run (resume after a kill) reuses a package only when it was made
from this attempt's inputs; each export attempt writes its own ONNX folder (issue 11, point 5)."""

from __future__ import annotations

from pathlib import Path

from stages.export import export_and_check
from stages.hpo_worker import run_trials
from stages.prepare import prepare_run
from stages.publish import publish_run
from stages.quantize import quantize_model
from stages.select import select_best
from tests.tiny import tiny_config
from trainflow.core.config import parse_config_dict
from trainflow.core.io import sha256_file
from trainflow.release.metadata import read_metadata


def test_a_new_attempt_with_other_inputs_publishes_its_own_version(tmp_path: Path, tiny_model_dir: Path) -> None:
    raw = tiny_config(tmp_path, tiny_model_dir)
    raw["hpo"].update(n_trials=1, n_workers=1, pruner="none")
    raw["quantize"].update(search=False, recipes=[{"name": "u8s8-minmax"}])
    cfg = parse_config_dict(raw)
    ctx = prepare_run(cfg=cfg, run_key="r1")
    run_trials(cfg=cfg, ctx=ctx, worker=0)
    best, records = select_best(cfg=cfg, ctx=ctx)

    def attempt(cfg, version: str):
        exported = export_and_check(cfg=cfg, ctx=ctx, model_dir=best.model_dir)
        quant = quantize_model(cfg=cfg, ctx=ctx, exported=exported)
        package = publish_run(cfg=cfg, ctx=ctx, best=best, records=records, exported=exported, quant=quant,
                              pathspec=f"TrainFlow/r1/publish/{version}", version=version)  # fmt: skip
        return exported, package

    first_export, first = attempt(cfg, "v1-r1")
    first_digest = sha256_file(first_export.onnx_path)
    # The same inputs again (a resume after the package was renamed into place): reused.
    _, again = attempt(cfg, "v2-r1")
    assert again.path == first.path
    # A resumed `export` with another opset: other ONNX bytes, so a package of its own.
    raw["export"]["opset"] = 18
    second_export, second = attempt(parse_config_dict(raw), "v3-r1")
    assert second.path != first.path and read_metadata(second.path).onnx.opset == 18
    assert Path(second_export.onnx_dir) != Path(first_export.onnx_dir)
    assert sha256_file(first_export.onnx_path) == first_digest, "the first package's lineage still holds"
    assert read_metadata(first.path).onnx.opset == 17
