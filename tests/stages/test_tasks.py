"""Multi-label, regression and text-pair tasks through the flow's steps chained without Metaflow,
on the shipped data: the package predicts what the task predicts (label sets with per-label
probabilities, values, pair classes) and a consumer reproduces the recorded test metrics from it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

from stages.distill import pick_student, prepare_distillation, run_students
from stages.export import export_and_check
from stages.publish import publish_run
from stages.quantize import quantize_model
from tests.serving import server
from tests.stages.ordinal import one_trial
from tests.tiny import ROOT
from trainflow.core.config import parse_config_dict
from trainflow.data.dataset import load_split
from trainflow.package import LabelSetPrediction, Prediction, ValuePrediction, load
from trainflow.release.package import verify_package
from trainflow.search import space as search_space
from trainflow.tasks.multilabel import multilabel_metrics
from trainflow.tasks.regression import regression_metrics

TAGS = ["positive", "negative", "strong", "weak", "active", "passive", "hostile", "virtue", "vice"]


def search(tiny_cfg: dict, task: dict, data: dict, **sections: Any):  # noqa: ANN201 - (cfg, ctx, best, records)
    """One trial of `task` on `data` (a shipped file), run key "r1"."""
    tiny_cfg.update(task=task, data={**tiny_cfg["data"], **data}, **sections)
    tiny_cfg["hpo"].update(n_trials=1, n_workers=1)
    tiny_cfg["hpo"].pop("metric", None)  # the task's default metric
    tiny_cfg["quantize"] = {**tiny_cfg.get("quantize", {}), "max_accuracy_drop": 1.0}  # a tiny model: open the gate
    return one_trial(parse_config_dict(tiny_cfg))


def publish(cfg, ctx, best, records, model_dir: str, version: str = "v1", distilled=None) -> Path:  # noqa: ANN001
    exported = export_and_check(cfg=cfg, ctx=ctx, model_dir=model_dir, distilled=distilled)
    quant = quantize_model(cfg=cfg, ctx=ctx, exported=exported)
    package = publish_run(cfg=cfg, ctx=ctx, best=best, records=records, exported=exported, quant=quant,
                          pathspec=f"TrainFlow/r1/publish/{version}", version=version, distilled=distilled)  # fmt: skip
    verify_package(Path(package.path))
    return Path(package.path)


def consumer(path: Path, inputs: list) -> list[dict]:
    """What docs/tasks.md's onnxruntime + tokenizers + numpy example prints for `inputs`."""
    doc = (ROOT / "docs" / "tasks.md").read_text()
    code = re.search(r"<!-- consumer-example-tasks -->\n```python\n(.*?)```", doc, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code, str(path)], input="\n".join(json.dumps(x) for x in inputs),
                         capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_multilabel_publishes_label_sets_with_tuned_thresholds_and_distils(tiny_cfg: dict, tmp_path: Path) -> None:
    cfg, ctx, best, records = search(
        tiny_cfg, {"type": "multilabel", "labels": TAGS},
        {"path": str(ROOT / "data" / "word_tags.csv.gz"), "label_column": "labels", "max_rows": 400},
        distill={"enabled": True, "student_layers": [1], "max_accuracy_drop": 1.0},
    )  # fmt: skip
    assert cfg.hpo.metric == "macro_f1" and cfg.registry.metric == "macro_f1"
    assert set(best.metrics) >= {"micro_f1", "macro_f1", "subset_accuracy", "loss"}
    assert ctx.snapshot.labels["(no label)"] > 0 and set(TAGS) <= set(ctx.snapshot.labels)
    # Distillation of the multi-label teacher: a 1-layer student learns its per-label probabilities.
    plan = prepare_distillation(cfg=cfg, ctx=ctx, best=best, teacher_dir=str(best.model_dir))
    (student,) = run_students(cfg=cfg, ctx=ctx, plan=plan, worker=0)
    assert student.state == "COMPLETE" and "macro_f1" in student.metrics
    shipped = pick_student(cfg=cfg, ctx=ctx, plan=plan, best=best)
    assert shipped.chosen == "student"
    chosen = search_space.apply(search_space.apply(cfg, best.params), shipped.chosen_params)
    path = publish(chosen, ctx, best, records, shipped.model_dir, distilled=shipped)
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["task"] == "multilabel" and meta["distillation"]["chosen"] == "student"
    assert len(meta["thresholds"]) == len(TAGS) and all(0 < t < 1 for t in meta["thresholds"])
    assert meta["quantization"]["gate_metric"] == "micro_f1"
    assert set(meta["metrics"]["test_fp32_onnx"]) == {"micro_f1", "macro_f1", "subset_accuracy"}
    assert set(meta["metrics"]["test_majority_baseline"]) == {"micro_f1", "macro_f1", "subset_accuracy"}
    # The package predicts label sets; a consumer reproduces the recorded test metrics from them.
    test = load_split(ctx.snapshot, "test")
    predicted = load(path, model="fp32").predict(test.texts)
    assert all(isinstance(p, LabelSetPrediction) for p in predicted)
    assert all(set(p.probabilities) == set(TAGS) for p in predicted)
    thresholds = dict(zip(TAGS, meta["thresholds"], strict=True))
    assert all(set(p.labels) == {n for n, v in p.probabilities.items() if v >= thresholds[n]} for p in predicted)
    sets = np.asarray([[name in p.labels for name in TAGS] for p in predicted])
    recomputed = multilabel_metrics(np.asarray(test.labels), sets)
    assert recomputed == pytest.approx(meta["metrics"]["test_fp32_onnx"])
    card = (path / "README.md").read_text()
    assert "Tags short texts with any of positive" in card and "per-label majority" in card
    int8 = load(path, model="int8").predict(test.texts[:20], batch_size=20)
    assert consumer(path, test.texts[:20]) == [{"labels": p.labels} for p in int8]  # type: ignore[union-attr]
    # Promotion compares by the package's own registry.metric (macro_f1), also without --config.
    publish(chosen, ctx, best, records, shipped.model_dir, version="v2", distilled=shipped)
    for version in ("v1", "v2"):
        done = subprocess.run([sys.executable, "-m", "trainflow.app.cli", "promote", version, "--artifact-root",
                               str(path.parent.parent)], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
    with server(str(path), "--onnx", "int8", tmp_path=tmp_path) as s:  # label sets over the OIP
        infer = httpx.post(f"{s.url}/v2/models/{cfg.name}/infer", json={"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [20], "data": test.texts[:20]}]}).json()  # fmt: skip
    by_name = {o["name"]: o for o in infer["outputs"]}
    assert [json.loads(x) for x in by_name["labels"]["data"]] == [p.labels for p in int8]  # type: ignore[union-attr]
    assert by_name["probabilities"]["shape"] == [20, len(TAGS)]


def test_regression_publishes_values_on_the_targets_scale(tiny_cfg: dict) -> None:
    cfg, ctx, best, records = search(
        tiny_cfg, {"type": "regression"},
        {"path": str(ROOT / "data" / "word_pleasantness.csv.gz"), "label_column": "pleasantness", "max_rows": 300},
    )  # fmt: skip
    assert cfg.hpo.metric == "mse" and cfg.hpo.direction == "minimize"
    assert set(best.metrics) == {"mse", "mae", "pearson", "spearman", "loss"}
    path = publish(cfg, ctx, best, records, best.model_dir)
    meta = json.loads((path / "metadata.json").read_text())
    mean, std = meta["scale"]
    train = np.asarray(load_split(ctx.snapshot, "train").labels)
    assert mean == pytest.approx(train.mean()) and std == pytest.approx(train.std())
    assert meta["quantization"]["gate_metric"] == "pearson" and meta["label_map"] == {}
    assert meta["metrics"]["test_majority_baseline"]["pearson"] == 0.0  # the training mean: no correlation
    test = load_split(ctx.snapshot, "test")
    predicted = load(path, model="fp32").predict(test.texts)
    assert all(isinstance(p, ValuePrediction) for p in predicted)
    values = np.asarray([p.value for p in predicted])
    assert 0.5 < values.mean() < 3.5  # on the 1-3 pleasantness scale, not the standardised one
    recomputed = regression_metrics(np.asarray(test.labels), values)
    assert recomputed == pytest.approx(meta["metrics"]["test_fp32_onnx"], rel=1e-4, abs=1e-5)
    assert "Predicts a value" in (path / "README.md").read_text()
    int8 = load(path, model="int8").predict(test.texts[:20], batch_size=20)
    assert [r["value"] for r in consumer(path, test.texts[:20])] == pytest.approx([p.value for p in int8])  # type: ignore[union-attr]


def test_text_pairs_are_encoded_as_pairs_end_to_end(tiny_cfg: dict, tmp_path: Path) -> None:
    cfg, ctx, best, records = search(
        tiny_cfg, {"type": "classification", "labels": ["negative", "neutral", "positive"]},
        {"path": str(ROOT / "data" / "drug_review_pairs.csv.gz"), "text_column": "condition",
         "text_pair_column": "text", "max_rows": 200},
    )  # fmt: skip
    test = load_split(ctx.snapshot, "test")
    assert test.pairs is not None and test.inputs[0] == (test.texts[0], test.pairs[0])
    path = publish(cfg, ctx, best, records, best.model_dir)
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["text_pair"] is True and "token_type_ids" in meta["onnx"]["inputs"]
    graph_inputs = {i.name for i in onnx.load(str(path / "model.onnx"), load_external_data=False).graph.input}
    assert "token_type_ids" in graph_inputs
    model = load(path, model="fp32")
    predicted = model.predict(test.inputs)
    assert all(isinstance(p, Prediction) for p in predicted)
    accuracy = float(np.mean([p.index == y for p, y in zip(predicted, test.labels, strict=True)]))
    assert accuracy == pytest.approx(meta["metrics"]["test_fp32_onnx"]["accuracy"])
    # The second text matters: the pair's token types mark it, and swapping the texts changes outputs.
    swapped = model.logits([(b, a) for a, b in test.inputs[:8]])
    assert not np.allclose(swapped, model.logits(test.inputs[:8]))
    with pytest.raises(ValueError, match="reads text pairs"):
        model.predict(["a single text"])
    # Served: pairs over /v1/predict and as the OIP inputs text and text_pair, batch-1 answers.
    pairs = [list(x) for x in test.inputs[:6]]
    expected = [asdict(load(path, model="int8").predict([tuple(x)], batch_size=1)[0]) for x in pairs]
    with server(str(path), "--onnx", "int8", tmp_path=tmp_path) as s:
        assert httpx.post(f"{s.url}/v1/predict", json={"pairs": pairs}).json()["predictions"] == expected
        assert httpx.post(f"{s.url}/v1/predict", json={"texts": ["one"]}).status_code == 400
        meta = httpx.get(f"{s.url}/v2/models/{cfg.name}").json()
        assert [i["name"] for i in meta["inputs"]] == ["text", "text_pair"]
        infer = httpx.post(f"{s.url}/v2/models/{cfg.name}/infer", json={"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [6], "data": [a for a, _ in pairs]},
            {"name": "text_pair", "datatype": "BYTES", "shape": [6], "data": [b for _, b in pairs]}]}).json()  # fmt: skip
        assert infer["outputs"][0]["data"] == [e["label"] for e in expected]
    assert "Encode a pair with" in (path / "README.md").read_text()
    int8 = load(path, model="int8").predict(test.inputs[:20], batch_size=20)
    assert consumer(path, [list(x) for x in test.inputs[:20]]) == [{"label": p.label} for p in int8]  # type: ignore[union-attr]
