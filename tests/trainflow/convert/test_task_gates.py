"""The INT8 gate and the parity gate per task: multi-label holds micro-F1 and regression Pearson's r
within quantize.max_accuracy_drop of FP32 (a broken INT8 model is refused, naming the metric), and
the parity gate compares each task's output shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from tests.trainflow.convert.test_export_parity import TEXTS, _tamper_classifier_bias
from trainflow.convert.export import export_onnx
from trainflow.convert.onnx_model import OnnxTextModel
from trainflow.convert.parity import check_parity
from trainflow.convert.quantize import quantize_and_gate
from trainflow.core.config import ExportConfig, QuantizeConfig, RecipeConfig
from trainflow.core.errors import QuantizationAccuracyError
from trainflow.data.dataset import SplitData
from trainflow.tasks.task import TaskHead
from trainflow.training.modeling import build_model, save_model

NAIVE = RecipeConfig(name="naive", per_channel=False, reduce_range=False, weight_ops_only=False,
                     op_types=["MatMul", "Add", "Gemm"])  # fmt: skip


def _split(texts: list, targets: list) -> SplitData:
    return SplitData([str(i) for i in range(len(texts))], list(texts), targets)


def _gate(onnx_dir: Path, head: TaskHead, targets: list, *, drop: float, calibration: list[str]):  # noqa: ANN202
    q = QuantizeConfig(max_accuracy_drop=drop, recipes=[NAIVE] if drop == 0.0 else QuantizeConfig().recipes[:1],
                       latency_samples=8, latency_rounds=1)  # fmt: skip
    return quantize_and_gate(fp32_path=onnx_dir / "model.onnx", tokenizer=AutoTokenizer.from_pretrained(onnx_dir),
                             task=head.task, n_classes=len(head.labels), cutpoints=None,
                             calibration=_split(calibration, targets[: len(calibration)]),
                             test=_split(TEXTS, targets), max_length=32, q=q, head=head)  # fmt: skip


def test_multilabel_gate_holds_micro_f1(tmp_path: Path, tiny_onnx: Path) -> None:
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_onnx, onnx_dir)
    tok = AutoTokenizer.from_pretrained(onnx_dir)
    logits = OnnxTextModel(onnx_dir / "model.onnx", tok, 32).logits(TEXTS)
    centre = np.median(logits, axis=0).astype(np.float32)  # each label on for half the texts
    _tamper_classifier_bias(onnx_dir / "model.onnx", onnx_dir / "model.onnx", -centre)
    head = TaskHead("multilabel", ("a", "b"), thresholds=(0.5, 0.5))
    sets = head.decide(OnnxTextModel(onnx_dir / "model.onnx", tok, 32).logits(TEXTS))
    targets = [[float(v) for v in row] for row in sets]
    passed = _gate(onnx_dir, head, targets, drop=1.0, calibration=TEXTS[:16])
    assert passed.gate_metric == "micro_f1" and passed.fp32_metrics["micro_f1"] == 1.0
    assert passed.accuracy_drop == pytest.approx(1.0 - passed.int8_metrics["micro_f1"])
    with pytest.raises(QuantizationAccuracyError, match=r"no INT8 recipe keeps test micro_f1 within 0.00 points"):
        _gate(onnx_dir, head, targets, drop=0.0, calibration=["a"] * 4)


def test_regression_gate_holds_pearson_and_parity_compares_the_score(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = build_model(task="regression", labels=[], base=str(tiny_model_dir), scale=(2.0, 0.5))
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "m")
    export_onnx(model_dir=tmp_path / "m", out_dir=tmp_path / "onnx", export=ExportConfig())
    parity = check_parity(model_dir=tmp_path / "m", onnx_path=tmp_path / "onnx" / "model.onnx", texts=TEXTS,
                          max_length=32, atol=1e-4)  # fmt: skip
    assert parity.n_samples == len(TEXTS) and parity.prediction_agreement == 1.0
    head = TaskHead("regression", (), scale=(2.0, 0.5))
    outputs = OnnxTextModel(tmp_path / "onnx" / "model.onnx", AutoTokenizer.from_pretrained(tmp_path / "onnx"),
                            32).logits(TEXTS)  # fmt: skip
    assert outputs.shape == (len(TEXTS), 1)
    targets = [float(v) for v in head.scores(outputs)]  # the FP32 values: Pearson's r 1.0
    passed = _gate(tmp_path / "onnx", head, targets, drop=1.0, calibration=TEXTS[:16])
    assert passed.gate_metric == "pearson" and passed.fp32_metrics["pearson"] == pytest.approx(1.0)
    assert passed.fp32_metrics["mse"] == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(QuantizationAccuracyError, match=r"no INT8 recipe keeps test pearson within 0.00 points"):
        _gate(tmp_path / "onnx", head, targets, drop=0.0, calibration=["a"] * 4)
