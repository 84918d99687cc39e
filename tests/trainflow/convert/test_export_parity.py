from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from transformers import AutoTokenizer

from tests.tiny import rt_texts
from trainflow.convert.export import export_onnx
from trainflow.convert.onnx_model import OnnxTextModel
from trainflow.convert.parity import check_parity
from trainflow.convert.quantize import (
    TextCalibrationReader,
    count_nodes,
    prepare_graph,
    quantize_and_gate,
    quantize_static_int8,
)
from trainflow.core.config import FF2_PATTERN, ExportConfig, QuantizeConfig, RecipeConfig
from trainflow.core.errors import ParityError, QuantizationAccuracyError
from trainflow.data.dataset import SplitData
from trainflow.training.modeling import build_model, save_model

TEXTS = rt_texts(48)


def test_export_structure_opset_and_dynamic_axes(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx / "model.onnx"))
    onnx.checker.check_model(model)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in dims), "batch and sequence axes must be dynamic"
    out = OnnxTextModel(tiny_onnx / "model.onnx", AutoTokenizer.from_pretrained(tiny_onnx), 32).logits(TEXTS[:5], 2)
    assert out.shape == (5, 2)


def test_parity_passes_for_a_faithful_export(tiny_trained: Path, tiny_onnx: Path) -> None:
    result = check_parity(model_dir=tiny_trained, onnx_path=tiny_onnx / "model.onnx", texts=TEXTS, max_length=32,
                          atol=1e-4)  # fmt: skip
    assert result.n_samples == len(TEXTS)
    assert result.max_abs_diff < 1e-4 and result.prediction_agreement == 1.0


def _tamper_classifier_bias(src: Path, dst: Path, delta: float | np.ndarray) -> Path:
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if "classifier.bias" in init.name:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + delta, init.name))
            break
    else:
        raise AssertionError("no classifier bias in graph")
    onnx.save(model, str(dst))
    return dst


def test_parity_gate_fails_on_a_broken_model(tmp_path: Path, tiny_trained: Path, tiny_onnx: Path) -> None:
    broken = _tamper_classifier_bias(tiny_onnx / "model.onnx", tmp_path / "broken.onnx", 0.05)
    with pytest.raises(ParityError, match=r"max \|logit diff\| 0.05 > atol 0.0001"):
        check_parity(model_dir=tiny_trained, onnx_path=broken, texts=TEXTS, max_length=32, atol=1e-4)


def test_ordinal_head_exports_a_scalar_score(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = build_model(task="ordinal", labels=["lo", "mid", "hi"], base=str(tiny_model_dir))
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "m")
    export_onnx(model_dir=tmp_path / "m", out_dir=tmp_path / "onnx", export=ExportConfig())
    assert (tmp_path / "onnx" / "head.json").is_file(), "cutpoints travel beside the graph"
    result = check_parity(model_dir=tmp_path / "m", onnx_path=tmp_path / "onnx" / "model.onnx", texts=TEXTS,
                          max_length=32, atol=1e-4)  # fmt: skip
    assert result.max_abs_diff < 1e-4
    out = OnnxTextModel(tmp_path / "onnx" / "model.onnx", AutoTokenizer.from_pretrained(tmp_path / "m"), 32)
    assert out.logits(TEXTS[:3]).shape == (3, 1)


def test_int8_recipe_structure(tmp_path: Path, tiny_onnx: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_onnx)
    prepared, out = tmp_path / "p.onnx", tmp_path / "q.onnx"
    prepare_graph(fp32_path=tiny_onnx / "model.onnx", out_path=prepared, level="basic", tokenizer=tok,
                  texts=TEXTS[:16], max_length=32, atol=1e-4)  # fmt: skip
    names = [i.name for i in onnx.load(str(prepared)).graph.input]
    recipe = RecipeConfig(name="s8s8-ff2", activation_type="QInt8", exclude_node_patterns=[FF2_PATTERN])
    info = quantize_static_int8(model_path=prepared, out_path=out, reader=TextCalibrationReader(tok, TEXTS[:16], 32,
                                names), recipe=recipe)  # fmt: skip
    nodes = count_nodes(out)
    fp32_matmuls = count_nodes(tiny_onnx / "model.onnx")["MatMul"]
    # Weight MatMuls: 2 layers x (Q, K, V, attention out, FF1) = 10 quantized. FF2 (excluded by
    # pattern) and the 2 x 2 activation x activation attention MatMuls stay FP32.
    assert info["quantized_nodes"] == 10
    assert info["excluded_nodes"] == [f"/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(2)]
    assert nodes["MatMul"] == fp32_matmuls
    # Inputs only: per layer 3 activations (Q/K/V input, context, FF1 input) + 5 weights.
    assert nodes["QuantizeLinear"] == 6 and nodes["DequantizeLinear"] == 16
    graph = onnx.load(str(out)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    by_name = {n.name: n for n in graph.node}
    for name in info["excluded_nodes"]:  # type: ignore[union-attr]
        assert all(producers.get(i) != "DequantizeLinear" for i in by_name[name].input), f"{name} must stay FP32"
    quantized = by_name["/bert/encoder/layer.0/intermediate/dense/MatMul"]
    assert any(producers.get(i) == "DequantizeLinear" for i in quantized.input)
    onnx.checker.check_model(onnx.load(str(out)))


def _split(texts: list[str], labels: np.ndarray) -> SplitData:
    return SplitData([str(i) for i in range(len(texts))], texts, [int(x) for x in labels])


def test_quantization_gate_passes_and_records_measurements(tmp_path: Path, tiny_onnx: Path) -> None:
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_onnx, onnx_dir)
    tok = AutoTokenizer.from_pretrained(onnx_dir)
    labels = OnnxTextModel(onnx_dir / "model.onnx", tok, 32).logits(TEXTS).argmax(1)
    result = quantize_and_gate(fp32_path=onnx_dir / "model.onnx", tokenizer=tok, task="classification", n_classes=2,
                               cutpoints=None, calibration=_split(TEXTS[:16], labels[:16]), test=_split(TEXTS, labels),
                               max_length=32, q=QuantizeConfig(max_accuracy_drop=1.0, latency_rounds=1),
                               latency_samples=8)  # fmt: skip
    assert result.fp32_metrics["accuracy"] == 1.0  # labels are the FP32 predictions
    assert result.accuracy_drop == pytest.approx(1.0 - result.int8_metrics["accuracy"])
    assert result.int8_latency["n"] == 8 and result.int8_latency["p95_ms"] > 0
    assert result.int8_size_bytes < result.fp32_size_bytes


def test_quantization_gate_fails_when_int8_breaks_the_model(tmp_path: Path, tiny_onnx: Path) -> None:
    """Calibrating on one-word inputs gives activation ranges far too narrow for real text: the
    INT8 model clips, its predictions change, and the gate must stop the run."""
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_onnx, onnx_dir)
    tok = AutoTokenizer.from_pretrained(onnx_dir)
    logits = OnnxTextModel(onnx_dir / "model.onnx", tok, 32).logits(TEXTS)
    # Centre the decision boundary so that half the samples fall on each side of it.
    shift = float(np.median(logits[:, 1] - logits[:, 0]))
    _tamper_classifier_bias(onnx_dir / "model.onnx", onnx_dir / "model.onnx", np.array([0.0, -shift], np.float32))
    labels = OnnxTextModel(onnx_dir / "model.onnx", tok, 32).logits(TEXTS).argmax(1)
    assert 0 < labels.sum() < len(labels), "FP32 predictions must vary for the gate to mean anything"
    bad_calibration = _split(["a"] * 4, labels[:4])
    naive = RecipeConfig(name="naive", per_channel=False, reduce_range=False, weight_ops_only=False,
                         op_types=["MatMul", "Add", "Gemm"])  # fmt: skip
    q = QuantizeConfig(max_accuracy_drop=0.0, recipes=[naive], latency_samples=8, latency_rounds=1)
    with pytest.raises(
        QuantizationAccuracyError, match=r"within 0.00 points .*\n  - naive: (screened-out|accuracy .* failed)"
    ):
        quantize_and_gate(fp32_path=onnx_dir / "model.onnx", tokenizer=tok, task="classification", n_classes=2,
                          cutpoints=None, calibration=bad_calibration, test=_split(TEXTS, labels),
                          max_length=32, q=q)  # fmt: skip
