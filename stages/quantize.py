"""INT8 static quantization (QDQ, QInt8) with a calibration reader, then an accuracy gate."""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from stages.config import QuantizeConfig
from stages.data import SplitData
from stages.errors import QuantizationAccuracyError
from stages.modeling import compute_metrics, predict_classes
from stages.onnx_model import OnnxTextModel, tokenize_batches

log = logging.getLogger(__name__)

INT8_FILE = "model_int8.onnx"


class TextCalibrationReader:
    """onnxruntime CalibrationDataReader over tokenized calibration texts (one per batch)."""

    def __init__(self, tokenizer: object, texts: list[str], max_length: int, input_names: list[str]) -> None:
        self._batches = [f for _, f in tokenize_batches(tokenizer, texts, max_length, 1, input_names)]
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


@dataclass(frozen=True)
class QuantizeResult:
    int8_path: str
    fp32_metrics: dict[str, float]
    int8_metrics: dict[str, float]
    accuracy_drop: float
    fp32_latency: dict[str, float]
    int8_latency: dict[str, float]
    fp32_size_bytes: int
    int8_size_bytes: int
    node_counts: dict[str, int] = field(default_factory=dict)
    recipe: dict[str, object] = field(default_factory=dict)


def quantize_static_int8(
    *, fp32_path: Path, out_path: Path, tokenizer: object, calibration: list[str], max_length: int, q: QuantizeConfig
) -> dict[str, object]:
    """Write a QDQ QInt8 model calibrated on `calibration`; return the recipe used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = out_path.with_name(out_path.stem + ".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepped), auto_merge=True)
    graph = onnx.load(str(prepped), load_external_data=False).graph
    input_names = [i.name for i in graph.input]
    excluded = matching_nodes(graph, q.exclude_node_patterns)
    nodes = [n for n in weight_nodes(graph, q.op_types) if n not in excluded] if q.weight_ops_only else None
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[q.calibration_method]
    quantize_static(
        str(prepped),
        str(out_path),
        TextCalibrationReader(tokenizer, calibration, max_length, input_names),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=q.per_channel,
        reduce_range=q.reduce_range,
        op_types_to_quantize=list(q.op_types),
        nodes_to_quantize=nodes,
        nodes_to_exclude=excluded,
        calibrate_method=method,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    prepped.unlink()
    return {
        "format": "QDQ",
        "activation_type": "QInt8",
        "weight_type": "QInt8",
        "per_channel": q.per_channel,
        "reduce_range": q.reduce_range,
        "op_types": list(q.op_types),
        "weight_ops_only": q.weight_ops_only,
        "exclude_node_patterns": list(q.exclude_node_patterns),
        "excluded_nodes": excluded,
        "quantized_nodes": None if nodes is None else len(nodes),
        "calibration_method": q.calibration_method,
        "calibration_samples": len(calibration),
    }


def weight_nodes(graph: onnx.GraphProto, op_types: list[str]) -> list[str]:
    """Nodes of `op_types` with a constant (initializer) input: the weight MatMuls. Activation x
    activation MatMuls (attention scores, attention x values) are the most sensitive to INT8."""
    inits = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in op_types and any(i in inits for i in n.input)]


def matching_nodes(graph: onnx.GraphProto, patterns: list[str]) -> list[str]:
    """Names of nodes matching any of the regular expressions (kept in FP32)."""
    compiled = [re.compile(p) for p in patterns]
    return [n.name for n in graph.node if any(c.search(n.name) for c in compiled)]


def count_nodes(path: Path) -> dict[str, int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(Counter(n.op_type for n in graph.node))


def evaluate_onnx(
    model: OnnxTextModel, task: str, split: SplitData, n_classes: int, cutpoints: list[float] | None
) -> dict[str, float]:
    logits = model.logits(split.texts)
    preds = predict_classes(task, logits, None if cutpoints is None else np.asarray(cutpoints))
    return compute_metrics(task, np.asarray(split.labels), preds, n_classes)


def quantize_and_gate(
    *,
    fp32_path: Path,
    tokenizer: object,
    task: str,
    n_classes: int,
    cutpoints: list[float] | None,
    calibration: SplitData,
    test: SplitData,
    max_length: int,
    q: QuantizeConfig,
    latency_samples: int = 64,
) -> QuantizeResult:
    """Quantize `fp32_path` to INT8 beside it, compare test accuracy, measure batch-1 latency.

    Raises:
        QuantizationAccuracyError: INT8 test accuracy is more than `q.max_accuracy_drop` below
            FP32 ONNX. The INT8 file is left for inspection; nothing is published.
    """
    int8_path = fp32_path.with_name(INT8_FILE)
    recipe = quantize_static_int8(
        fp32_path=fp32_path,
        out_path=int8_path,
        tokenizer=tokenizer,
        calibration=calibration.texts,
        max_length=max_length,
        q=q,
    )
    fp32 = OnnxTextModel(fp32_path, tokenizer, max_length)
    int8 = OnnxTextModel(int8_path, tokenizer, max_length)
    fp32_metrics = evaluate_onnx(fp32, task, test, n_classes, cutpoints)
    int8_metrics = evaluate_onnx(int8, task, test, n_classes, cutpoints)
    drop = fp32_metrics["accuracy"] - int8_metrics["accuracy"]
    nodes = count_nodes(int8_path)
    log.info("INT8: accuracy %.4f vs FP32 %.4f (drop %.4f)", int8_metrics["accuracy"], fp32_metrics["accuracy"], drop)
    if drop > q.max_accuracy_drop + 1e-12:
        raise QuantizationAccuracyError(
            f"INT8 model {int8_path} loses {drop * 100:.2f} accuracy points on the test split "
            f"({fp32_metrics['accuracy']:.4f} -> {int8_metrics['accuracy']:.4f}); the gate allows "
            f"{q.max_accuracy_drop * 100:.2f}. Recipe: {recipe}"
        )
    sample = test.texts[:latency_samples]
    return QuantizeResult(
        int8_path=str(int8_path),
        fp32_metrics=fp32_metrics,
        int8_metrics=int8_metrics,
        accuracy_drop=drop,
        fp32_latency=fp32.latency_ms(sample),
        int8_latency=int8.latency_ms(sample),
        fp32_size_bytes=fp32_path.stat().st_size,
        int8_size_bytes=int8_path.stat().st_size,
        node_counts={k: nodes.get(k, 0) for k in ("QuantizeLinear", "DequantizeLinear", "MatMul", "MatMulInteger")},
        recipe=recipe,
    )
