"""The flow's step functions chained without Metaflow, for the ordinal reference task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from stages.export import export_and_check
from stages.prepare import prepare_run
from stages.publish import publish_run
from stages.quantize import quantize_model
from tests.stages.ordinal import ordinal_search
from trainflow.convert.onnx_model import OnnxTextModel
from trainflow.core.config import parse_config_dict
from trainflow.core.errors import DatasetError
from trainflow.data.dataset import load_split
from trainflow.package import load
from trainflow.release.package import verify_package
from trainflow.tasks.heads import ordinal_probabilities, predict_classes


def test_ordinal_pipeline_publishes_score_model_with_cutpoints(tmp_path: Path, tiny_cfg: dict) -> None:
    cfg, ctx, best, records = ordinal_search(tiny_cfg)
    assert cfg.hpo.direction == "minimize" and best.value == best.metrics["mae"]
    exported = export_and_check(cfg=cfg, ctx=ctx, model_dir=best.model_dir)
    quant = quantize_model(cfg=cfg, ctx=ctx, exported=exported)
    package = publish_run(cfg=cfg, ctx=ctx, best=best, records=records, exported=exported, quant=quant,
                          pathspec="TrainFlow/r1/publish/7", version="v1")  # fmt: skip
    path = Path(package.path)
    verify_package(path)
    meta = json.loads((path / "metadata.json").read_text())
    cut = np.asarray(meta["cutpoints"])
    assert len(cut) == 2 and cut[0] < cut[1]
    assert meta["label_map"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert "sigmoid(cutpoints[k] - s)" in meta["onnx"]["output"]
    assert "mae" in meta["metrics"]["test_fp32_onnx"]
    # The INT8 search table, the chosen recipe and the session options travel in the package.
    quant_meta = meta["quantization"]
    assert [r["name"] for r in quant_meta["search"]] == [r.name for r in cfg.quantize.recipes]
    assert quant_meta["chosen_recipe"] in {r["name"] for r in quant_meta["search"] if r["passed"]}
    assert meta["onnx"]["session_options"]["intra_op_num_threads"] >= 1
    # A consumer reproduces the reported test accuracy from the package alone.
    test = load_split(ctx.snapshot, "test")
    onnx_model = OnnxTextModel(path / "model.onnx", AutoTokenizer.from_pretrained(path), meta["onnx"]["max_length"])
    scores = onnx_model.logits(test.texts)
    assert scores.shape == (len(test), 1)
    preds = predict_classes("ordinal", scores, cut)
    assert float((preds == np.asarray(test.labels)).mean()) == pytest.approx(
        meta["metrics"]["test_fp32_onnx"]["accuracy"]
    )
    probs = ordinal_probabilities(scores[:, 0], cut)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert meta["lineage"]["dataset_sha256"] == ctx.snapshot.sha256
    # The loader applies the cutpoints: label names of the number of cutpoints below each score.
    loaded = load(path, model="fp32").predict(test.texts)
    assert [p.index for p in loaded] == preds.tolist()
    assert [p.label for p in loaded] == [meta["label_map"][str(k)] for k in preds]
    np.testing.assert_allclose([list(p.probabilities.values()) for p in loaded], probs, atol=1e-5)


def test_bad_data_stops_before_any_study_or_training(tmp_path: Path, tiny_cfg: dict) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text,label\n1,good,fresh\n2,,rotten\n")
    tiny_cfg["data"]["path"] = str(bad)
    cfg = parse_config_dict(tiny_cfg)
    with pytest.raises(
        DatasetError,
        match=r"bad.csv: 1 problem.s. in 2 rows; nothing was trained:\n  - empty text in column 'text' in 1 row.s.: rows 2",
    ):
        prepare_run(cfg=cfg, run_key="r2")
    assert not list((tmp_path / "runs").rglob("optuna.journal"))
