"""INT8 static quantization (QDQ) as a small search over recipes, behind an accuracy gate.

`quantize_and_gate` prepares the FP32 graph once (optional ORT graph optimization, kept only if
the FP32 logits do not move), then for each recipe of `QuantizeConfig.recipes` (in order):
quantizes with a calibration reader, evaluates test accuracy, and finally times every candidate
and the FP32 model turn about at batch 1 with the same session options. It keeps the fastest
recipe whose accuracy drop passes the gate and copies it to `model_int8.onnx`; if none passes it
raises `QuantizationAccuracyError` listing every recipe's accuracy and latency.

A recipe with `keep_fp32_top_k` first quantizes without those exclusions, ranks the weight nodes
by their own INT8 output error (`layer_sensitivity`), then quantizes again with the k worst in FP32.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trainflow.config import QuantizeConfig, RecipeConfig
from trainflow.data import SplitData
from trainflow.diskspace import ensure_free_space
from trainflow.errors import QuantizationAccuracyError
from trainflow.modeling import compute_metrics, predict_classes
from trainflow.onnx_model import OnnxTextModel, SessionSettings, interleaved_latency_ms, tokenize_batches

log = logging.getLogger(__name__)

INT8_FILE = "model_int8.onnx"
SEARCH_DIR = "int8-search"
PREPARED_FILE = "prepared.onnx"
# Graph optimization levels, strongest first: a level whose FP32 logits drift falls back to the next.
LEVELS = ("fused", "basic", "none")
FP32_KEY = "FP32 ONNX"  # not a valid recipe name, so it never collides with one


class TextCalibrationReader:
    """onnxruntime CalibrationDataReader over tokenized calibration texts (one per batch).

    `fixed_length` pads every text to `max_length`: histogram calibrators (entropy, percentile)
    concatenate batches and need one shape.
    """

    def __init__(
        self, tokenizer: object, texts: list[str], max_length: int, input_names: list[str], fixed_length: bool = False
    ) -> None:
        if fixed_length:
            self._batches = []
            for text in texts:
                enc = tokenizer(  # type: ignore[operator]
                    [text], truncation=True, max_length=max_length, padding="max_length", return_tensors="np"
                )
                self._batches.append({name: enc[name].astype(np.int64) for name in input_names})
        else:
            self._batches = [f for _, f in tokenize_batches(tokenizer, texts, max_length, 1, input_names)]
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)

    @property
    def batches(self) -> list[dict[str, np.ndarray]]:
        return self._batches


@dataclass(frozen=True)
class RecipeOutcome:
    """One row of the search table."""

    name: str
    passed: bool
    accuracy: float | None = None
    accuracy_drop: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    size_bytes: int | None = None
    quantized_nodes: int | None = None
    fp32_weight_nodes: list[str] = field(default_factory=list)
    node_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.name}: failed to quantize ({self.error})"
        acc = f"accuracy {self.accuracy:.4f} (drop {(self.accuracy_drop or 0) * 100:+.2f} points)"
        lat = f"batch-1 p50 {self.p50_ms:.2f} ms, p95 {self.p95_ms:.2f} ms" if self.p50_ms is not None else "no latency"
        return f"{self.name}: {acc}, {lat}, {(self.size_bytes or 0) / 1e6:.1f} MB, {'PASS' if self.passed else 'FAIL'}"


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
    chosen: str = ""
    search: list[dict[str, Any]] = field(default_factory=list)
    session_options: dict[str, object] = field(default_factory=dict)
    graph_optimization: dict[str, object] = field(default_factory=dict)


# --- graph preparation ----------------------------------------------------------------------


def _fuse_transformer(fp32_path: Path, out_path: Path) -> dict[str, int]:
    """ORT's transformer fusions (LayerNorm, SkipLayerNorm, BiasGelu, EmbedLayerNorm). Attention
    fusion stays off: the fused Attention op has no QDQ support, so it would keep Q/K/V in FP32."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    cfg_file = fp32_path.parent / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    model_type = cfg.get("model_type", "bert")
    options = FusionOptions(model_type)
    options.enable_attention = False
    optimized = optimize_model(
        str(fp32_path),
        model_type=model_type,
        num_heads=int(cfg.get("num_attention_heads", 0)),
        hidden_size=int(cfg.get("hidden_size", 0)),
        optimization_options=options,
        opt_level=0,
    )
    optimized.save_model_to_file(str(out_path))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def prepare_graph(
    *, fp32_path: Path, out_path: Path, level: str, tokenizer: object, texts: list[str], max_length: int, atol: float
) -> dict[str, object]:
    """Write the graph the recipes quantize: `level` (fused/basic/none) of graph optimization plus
    ONNX Runtime's shape inference. A level is kept only if FP32 logits on `texts` stay within
    `atol` of the exported model; otherwise the next lower level is tried. Returns what was done."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reference = OnnxTextModel(fp32_path, tokenizer, max_length).logits(texts)
    tried: list[dict[str, object]] = []
    for candidate in LEVELS[LEVELS.index(level) :]:
        fusions: dict[str, int] = {}
        source = fp32_path
        if candidate == "fused":
            source = out_path.with_name("fused.onnx")
            fusions = _fuse_transformer(fp32_path, source)
        quant_pre_process(str(source), str(out_path), skip_optimization=candidate == "none", auto_merge=True)
        if source != fp32_path:
            source.unlink()
        diff = float(np.abs(OnnxTextModel(out_path, tokenizer, max_length).logits(texts) - reference).max())
        tried.append({"level": candidate, "max_abs_diff": diff, "fusions": fusions})
        if diff <= atol or candidate == "none":
            if candidate != level:
                log.warning("graph optimization %r moved FP32 logits beyond %g; used %r", level, atol, candidate)
            return {
                "requested": level,
                "applied": candidate,
                "fusions": fusions,
                "max_abs_diff": diff,
                "atol": atol,
                "n_samples": len(texts),
                "tried": tried,
            }
    raise AssertionError("unreachable: level 'none' always returns")


# --- one recipe -------------------------------------------------------------------------------


def weight_nodes(graph: onnx.GraphProto, op_types: Sequence[str]) -> list[str]:
    """Nodes of `op_types` with a constant (initializer) input: the weight MatMuls. Activation x
    activation MatMuls (attention scores, attention x values) are the most sensitive to INT8."""
    inits = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in op_types and any(i in inits for i in n.input)]


def matching_nodes(graph: onnx.GraphProto, patterns: Sequence[str]) -> list[str]:
    """Names of nodes matching any of the regular expressions (kept in FP32)."""
    compiled = [re.compile(p) for p in patterns]
    return [n.name for n in graph.node if any(c.search(n.name) for c in compiled)]


def count_nodes(path: Path) -> dict[str, int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(Counter(n.op_type for n in graph.node))


def quantize_static_int8(
    *,
    model_path: Path,
    out_path: Path,
    reader: TextCalibrationReader,
    recipe: RecipeConfig,
    exclude_nodes: Sequence[str] = (),
    calibration_cache: Path | None = None,
) -> dict[str, object]:
    """Write a static QDQ model of the prepared graph `model_path`; return what was quantized.

    `exclude_nodes` are kept FP32 in addition to the recipe's patterns. `calibration_cache` (a JSON
    file, written on first use) shares tensor ranges between recipes of one method and op types.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(model_path), load_external_data=False).graph
    excluded = sorted(set(matching_nodes(graph, recipe.exclude_node_patterns)) | set(exclude_nodes))
    nodes = [n for n in weight_nodes(graph, recipe.op_types) if n not in excluded] if recipe.weight_ops_only else None
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.calibration_method]
    reader.rewind()
    quantize_static(
        str(model_path),
        str(out_path),
        reader,
        quant_format=QuantFormat.QDQ,
        activation_type=getattr(QuantType, recipe.activation_type),
        weight_type=getattr(QuantType, recipe.weight_type),
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        op_types_to_quantize=list(recipe.op_types),
        nodes_to_quantize=nodes,
        nodes_to_exclude=excluded,
        calibrate_method=method,
        extra_options={
            "ActivationSymmetric": False,
            "WeightSymmetric": True,
            "OpTypesToExcludeOutputQuantization": [] if recipe.quantize_outputs else list(recipe.op_types),
        },
        calibration_cache_path=calibration_cache,
    )
    targets = {
        n.name
        for n in graph.node
        if n.op_type in recipe.op_types and n.name not in excluded and (nodes is None or n.name in nodes)
    }
    restored = restore_fp32_consumers(out_path, targets)
    return {
        **recipe.model_dump(),
        "format": "QDQ",
        "excluded_nodes": excluded,
        "fp32_inputs_restored": restored,
        "quantized_nodes": None if nodes is None else len(nodes),
        "calibration_samples": len(reader.batches),
    }


def restore_fp32_consumers(path: Path, quantized: set[str]) -> int:
    """Make every node outside `quantized` read the FP32 tensor again; return how many inputs.

    ONNX Runtime's QDQ quantizer inserts one Q -> DQ pair per quantized activation and rewires
    *all* consumers of that tensor to the DQ output (`replace_input_of_all_nodes`), so a node
    kept FP32 that shares its input with a quantized one (V beside Q and K, the residual Add
    beside FF1) would silently read the INT8-rounded value. Dangling Q/DQ nodes are dropped.
    """
    model = onnx.load(str(path))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    restored = 0
    for node in graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
                restored += 1
    if restored:
        outputs = {o.name for o in graph.output}
        while True:
            used = {i for n in graph.node for i in n.input} | outputs
            dangling = [
                n
                for n in graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not set(n.output) & used
            ]
            if not dangling:
                break
            for n in dangling:
                graph.node.remove(n)
        onnx.save(model, str(path))
    return restored


# --- per-layer sensitivity ----------------------------------------------------------------------


def _init(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray:
    return numpy_helper.to_array(inits[name])


def _quantized_matmuls(fp32: onnx.ModelProto, int8: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """For each MatMul of `int8` with DequantizeLinear on both inputs (activation and constant
    weight): the FP32 activation name, the activation's scale/zero point and the dequantized
    weight, i.e. exactly what ONNX Runtime multiplies."""
    qinits = {i.name: i for i in int8.graph.initializer}
    producer = {o: n for n in int8.graph.node for o in n.output}
    fnodes = {n.name: n for n in fp32.graph.node}
    finits = {i.name for i in fp32.graph.initializer}
    specs: dict[str, dict[str, Any]] = {}
    for node in int8.graph.node:
        if node.op_type != "MatMul" or node.name not in fnodes:
            continue
        act, wdq = (producer.get(i) for i in node.input[:2])
        if not (act and wdq and act.op_type == wdq.op_type == "DequantizeLinear" and wdq.input[0] in qinits):
            continue
        quant = producer.get(act.input[0])
        if quant is None or quant.op_type != "QuantizeLinear" or fnodes[node.name].input[1] not in finits:
            continue
        axis = next((helper.get_attribute_value(a) for a in wdq.attribute if a.name == "axis"), 1)
        w_scale = _init(qinits, wdq.input[1]).astype(np.float32)
        w_zp = _init(qinits, wdq.input[2]).astype(np.float32) if len(wdq.input) > 2 else np.zeros_like(w_scale)
        wq = _init(qinits, wdq.input[0]).astype(np.float32)
        shape = [-1 if d == axis else 1 for d in range(wq.ndim)] if w_scale.ndim else []
        specs[node.name] = {
            "x": quant.input[0],
            "w": fnodes[node.name].input[1],
            "wdq": (wq - w_zp.reshape(shape)) * w_scale.reshape(shape),
            "scale": qinits[act.input[1]],
            "zero_point": qinits[act.input[2]],
        }
    return specs


def layer_sensitivity(*, model_path: Path, int8_path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Output error of each quantized weight MatMul of `int8_path`, quantized alone.

    Builds one FP32 graph (`model_path`) in which every such node's inputs can be switched to
    their INT8 versions, `x + on * (DQ(Q(x)) - x)` and `W + on * (DQ(W_q) - W)`, with the scales,
    zero points and integer weights of `int8_path`; a scalar input selects the node that is on.
    One session then runs the FP32 reference and each node alone on the batches `feeds`. The error
    is `sum((logits_node - logits_fp32)^2) / sum(logits_fp32^2)`: what this node alone does to the
    model's output, including how downstream layers amplify or absorb it (a purely local measure
    ranks BERT's FF1 first, whose error GELU mostly absorbs). Largest first.
    """
    import onnxruntime as ort

    fp32 = onnx.load(str(model_path))
    specs = _quantized_matmuls(fp32, onnx.load(str(int8_path)))
    if not specs:
        return {}
    g = fp32.graph
    select = "trainflow_sensitivity_select"
    g.input.append(helper.make_tensor_value_info(select, onnx.TensorProto.INT64, []))
    by_name = {n.name: n for n in g.node}
    new_nodes: list[onnx.NodeProto] = []
    for i, (name, s) in enumerate(specs.items()):
        p = f"trainflow_sens{i}_"
        g.initializer.extend(
            [
                numpy_helper.from_array(np.asarray(i, np.int64), p + "index"),
                numpy_helper.from_array(s["wdq"].astype(np.float32), p + "wdq"),
                numpy_helper.from_array(numpy_helper.to_array(s["scale"]), p + "scale"),
                numpy_helper.from_array(numpy_helper.to_array(s["zero_point"]), p + "zp"),
            ]
        )
        new_nodes += [
            helper.make_node("Equal", [select, p + "index"], [p + "eq"]),
            helper.make_node("Cast", [p + "eq"], [p + "on"], to=onnx.TensorProto.FLOAT),
            helper.make_node("QuantizeLinear", [s["x"], p + "scale", p + "zp"], [p + "xq"]),
            helper.make_node("DequantizeLinear", [p + "xq", p + "scale", p + "zp"], [p + "xdq"]),
            helper.make_node("Sub", [p + "xdq", s["x"]], [p + "xd"]),
            helper.make_node("Mul", [p + "xd", p + "on"], [p + "xdo"]),
            helper.make_node("Add", [s["x"], p + "xdo"], [p + "x"]),
            helper.make_node("Sub", [p + "wdq", s["w"]], [p + "wd"]),
            helper.make_node("Mul", [p + "wd", p + "on"], [p + "wdo"]),
            helper.make_node("Add", [s["w"], p + "wdo"], [p + "w"]),
        ]
        node = by_name[name]
        node.input[0], node.input[1] = p + "x", p + "w"
    # Topological order: the switch nodes read only graph inputs, initializers and the MatMul's
    # own input, so placing each group right before its MatMul keeps the graph sorted.
    ordered: list[onnx.NodeProto] = []
    groups = {name: new_nodes[10 * i : 10 * i + 10] for i, name in enumerate(specs)}
    for node in g.node:
        ordered += groups.get(node.name, [])
        ordered.append(node)
    del g.node[:]
    g.node.extend(ordered)
    opts = ort.SessionOptions()
    # Basic level only: nothing may fold the Q/DQ pairs away.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(fp32.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = g.output[0].name

    def run(index: int) -> np.ndarray:
        chosen = {select: np.asarray(index, np.int64)}
        return np.concatenate([session.run([out], {**f, **chosen})[0] for f in feeds]).astype(np.float64)

    reference = run(-1)
    power = max(float(np.square(reference).sum()), 1e-30)
    ranked = {name: float(np.square(run(i) - reference).sum()) / power for i, name in enumerate(specs)}
    return dict(sorted(ranked.items(), key=lambda kv: -kv[1]))


# --- the search -------------------------------------------------------------------------------


def evaluate_onnx(
    model: OnnxTextModel, task: str, split: SplitData, n_classes: int, cutpoints: list[float] | None
) -> dict[str, float]:
    logits = model.logits(split.texts)
    preds = predict_classes(task, logits, None if cutpoints is None else np.asarray(cutpoints))
    return compute_metrics(task, np.asarray(split.labels), preds, n_classes)


def _settings_key(recipe: RecipeConfig) -> str:
    """Recipes equal but for `name` and `keep_fp32_top_k` quantize to the same model."""
    return json.dumps(recipe.model_dump(exclude={"name", "keep_fp32_top_k"}), sort_keys=True)


def choose(outcomes: Sequence[RecipeOutcome], tie: float) -> RecipeOutcome | None:
    """The fastest passing recipe by batch-1 p50; recipes within `tie` (a fraction) of the fastest
    count as equally fast, and of those the smaller accuracy drop (then the earlier recipe) wins."""
    passing = [o for o in outcomes if o.passed and o.p50_ms is not None]
    if not passing:
        return None
    fastest = min(o.p50_ms or 0.0 for o in passing)
    ties = [o for o in passing if (o.p50_ms or 0.0) <= fastest * (1 + tie)]
    return min(ties, key=lambda o: o.accuracy_drop or 0.0)


@dataclass
class _Search:
    """State of one recipe search: the prepared graph, calibration readers, the FP32 reference,
    and what each recipe produced so far."""

    work: Path
    prepared: Path
    tokenizer: object
    max_length: int
    settings: SessionSettings
    readers: dict[bool, TextCalibrationReader]
    input_names: list[str]
    calibration: SplitData
    q: QuantizeConfig
    built: dict[str, Path] = field(default_factory=dict)  # settings key -> model without top-k exclusions
    details: dict[str, dict[str, object]] = field(default_factory=dict)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, OnnxTextModel] = field(default_factory=dict)

    def sensitive_nodes(self, recipe: RecipeConfig, reader: TextCalibrationReader, cache: Path) -> dict[str, float]:
        """Per-layer INT8 error of the recipe's plain model (built once per settings key)."""
        key = _settings_key(recipe)
        if key not in self.built:
            self.built[key] = self.work / f"{recipe.name}.base.onnx"
            quantize_static_int8(model_path=self.prepared, out_path=self.built[key], reader=reader, recipe=recipe,
                                 calibration_cache=cache)  # fmt: skip
        texts = self.calibration.texts[: self.q.sensitivity_samples]
        feeds = [f for _, f in tokenize_batches(self.tokenizer, texts, self.max_length, 8, self.input_names)]
        return layer_sensitivity(model_path=self.prepared, int8_path=self.built[key], feeds=feeds)

    def build(self, recipe: RecipeConfig) -> Path:
        """Quantize the prepared graph with `recipe`; record its details and session."""
        out = self.work / f"{recipe.name}.onnx"
        reader = self.readers[recipe.calibration_method != "minmax"]
        cache = self.work / f"calibration-{recipe.calibration_method}-{'-'.join(recipe.op_types)}.json"
        sensitivity = self.sensitive_nodes(recipe, reader, cache) if recipe.keep_fp32_top_k else {}
        extra = list(sensitivity)[: recipe.keep_fp32_top_k]
        detail = quantize_static_int8(model_path=self.prepared, out_path=out, reader=reader, recipe=recipe,
                                      exclude_nodes=extra, calibration_cache=cache)  # fmt: skip
        if recipe.keep_fp32_top_k == 0:
            self.built.setdefault(_settings_key(recipe), out)
        if sensitivity:
            detail["sensitivity"] = {k: float(f"{v:.3g}") for k, v in sensitivity.items()}
            detail["kept_fp32_by_sensitivity"] = extra
        self.details[recipe.name] = detail
        self.models[recipe.name] = OnnxTextModel(out, self.tokenizer, self.max_length, settings=self.settings)
        return out

    def try_recipe(self, recipe: RecipeConfig, evaluate: Any, fp32_accuracy: float) -> dict[str, float] | None:
        """Build and evaluate one recipe; its row of the table (a failure is a row, not an error)."""
        t0 = time.perf_counter()
        try:
            out = self.build(recipe)
            metrics = evaluate(self.models[recipe.name])
        except (OSError, MemoryError):
            raise  # the machine, not the recipe: a full disk or no memory fails every recipe alike
        except Exception as err:  # a broken recipe must not hide the others: logged, listed in the table
            log.warning("INT8 recipe %s failed", recipe.name, exc_info=True)
            self.rows[recipe.name] = {"name": recipe.name, "passed": False, "error": f"{type(err).__name__}: {err}"}
            return None
        drop = fp32_accuracy - metrics["accuracy"]
        counts = count_nodes(out)
        self.rows[recipe.name] = {
            "name": recipe.name,
            "passed": drop <= self.q.max_accuracy_drop + 1e-12,
            "accuracy": metrics["accuracy"],
            "accuracy_drop": drop,
            "size_bytes": out.stat().st_size,
            "quantized_nodes": self.details[recipe.name]["quantized_nodes"],
            "fp32_weight_nodes": self.details[recipe.name]["excluded_nodes"],
            "node_counts": {k: counts.get(k, 0) for k in ("QuantizeLinear", "DequantizeLinear", "MatMul")},
            "seconds": time.perf_counter() - t0,
        }
        log.info("INT8 recipe %s: accuracy %.4f (drop %.4f)", recipe.name, metrics["accuracy"], drop)
        return metrics


def _start_search(
    *, fp32_path: Path, tokenizer: object, calibration: SplitData, texts: list[str], max_length: int, q: QuantizeConfig
) -> tuple[_Search, dict[str, object]]:
    """A clean work folder, the prepared graph (and what was done to it), the calibration readers."""
    work = fp32_path.parent / SEARCH_DIR
    shutil.rmtree(work, ignore_errors=True)  # never reuse a stale calibration cache
    fp32_path.with_name(INT8_FILE).unlink(missing_ok=True)  # nor a previous attempt's INT8 model
    work.mkdir(parents=True)
    # The prepared graph, one candidate and the copy of the chosen one are each at most the FP32
    # file's size: check before writing, so a full disk is reported as such.
    ensure_free_space(work, 3 * fp32_path.stat().st_size, "the INT8 recipe search")
    prepared = work / PREPARED_FILE
    graph_opt = prepare_graph(fp32_path=fp32_path, out_path=prepared, level=q.graph_optimization, tokenizer=tokenizer,
                              texts=texts, max_length=max_length, atol=q.graph_optimization_atol)  # fmt: skip
    input_names = [i.name for i in onnx.load(str(prepared), load_external_data=False).graph.input]
    readers = {
        fixed: TextCalibrationReader(tokenizer, calibration.texts, max_length, input_names, fixed_length=fixed)
        for fixed in (False, True)
    }
    settings = SessionSettings(intra_op_num_threads=q.intra_op_threads).resolved()
    search = _Search(work, prepared, tokenizer, max_length, settings, readers, input_names, calibration, q)
    return search, graph_opt


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
    latency_samples: int | None = None,
) -> QuantizeResult:
    """Search the recipes of `q`, keep the fastest that passes the gate as `model_int8.onnx` beside
    `fp32_path`, and report every recipe tried.

    Raises:
        QuantizationAccuracyError: no recipe keeps test accuracy within `q.max_accuracy_drop` of
            FP32 ONNX. The message lists every recipe's accuracy and latency; the candidate models
            are left in `int8-search/` beside the FP32 model for inspection; nothing is published.
    """
    n_latency = latency_samples or q.latency_samples
    search, graph_opt = _start_search(fp32_path=fp32_path, tokenizer=tokenizer, calibration=calibration,
                                      texts=test.texts[:n_latency], max_length=max_length, q=q)  # fmt: skip
    fp32 = OnnxTextModel(fp32_path, tokenizer, max_length, settings=search.settings)

    def evaluate(model: OnnxTextModel) -> dict[str, float]:
        return evaluate_onnx(model, task, test, n_classes, cutpoints)

    fp32_metrics = evaluate(fp32)
    recipes = list(q.recipes) if q.search else list(q.recipes[:1])
    metrics: dict[str, dict[str, float] | None] = {}
    t0 = time.perf_counter()
    for i, recipe in enumerate(recipes, start=1):
        log.info("INT8 search: recipe %d of %d (%s), %.0f s so far", i, len(recipes), recipe.name,
                 time.perf_counter() - t0)  # fmt: skip
        metrics[recipe.name] = search.try_recipe(recipe, evaluate, fp32_metrics["accuracy"])
    latency = interleaved_latency_ms({FP32_KEY: fp32, **search.models}, test.texts[:n_latency], rounds=q.latency_rounds)
    table = []
    for recipe in recipes:
        row = search.rows[recipe.name]
        if recipe.name in latency:
            row.update(p50_ms=latency[recipe.name]["p50_ms"], p95_ms=latency[recipe.name]["p95_ms"])
        table.append(RecipeOutcome(**row))
    (search.work / "search.json").write_text(json.dumps([asdict(o) for o in table], indent=1))
    best = choose(table, q.latency_tie)
    if best is None:
        lines = "\n".join(f"  - {o.line()}" for o in table)
        raise QuantizationAccuracyError(
            f"no INT8 recipe keeps test accuracy within {q.max_accuracy_drop * 100:.2f} points of FP32 ONNX "
            f"({fp32_metrics['accuracy']:.4f}); FP32 batch-1 p50 {latency[FP32_KEY]['p50_ms']:.2f} ms. "
            f"Recipes tried ({len(table)}):\n{lines}\nCandidates left in {search.work}."
        )
    int8_path = fp32_path.with_name(INT8_FILE)
    chosen = search.work / f"{best.name}.onnx"
    ensure_free_space(int8_path, chosen.stat().st_size, "the chosen INT8 model")
    shutil.copyfile(chosen, int8_path)
    for path in search.work.glob("*.onnx"):
        path.unlink()  # the chosen one is copied; the table keeps the rest's figures
    log.info("INT8: chose %s of %d recipes", best.name, len(table))
    return QuantizeResult(
        int8_path=str(int8_path),
        fp32_metrics=fp32_metrics,
        int8_metrics=metrics[best.name] or {},
        accuracy_drop=best.accuracy_drop or 0.0,
        fp32_latency=latency[FP32_KEY],
        int8_latency=latency[best.name],
        fp32_size_bytes=fp32_path.stat().st_size,
        int8_size_bytes=int8_path.stat().st_size,
        node_counts=best.node_counts,
        recipe=search.details[best.name],
        chosen=best.name,
        search=[asdict(o) for o in table],
        session_options=search.settings.to_dict(),
        graph_optimization=graph_opt,
    )
