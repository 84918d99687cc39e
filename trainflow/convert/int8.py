"""Building INT8 models from an FP32 ONNX graph: graph preparation (ORT's transformer fusions,
parity-checked), static QDQ quantization with a calibration reader, dynamic quantization of the
attention-fused graph, and per-layer sensitivity. The search over recipes is trainflow/convert/quantize.py.

Graph levels, strongest first: `attention` (ORT's BERT fusions: Attention, EmbedLayerNorm,
BiasGelu, LayerNorm; what dynamic quantization turns into QAttention and
QEmbedLayerNormalization), `fused` (the same without Attention: static QDQ has no Attention
support and would keep Q/K/V in FP32), `basic` (ORT's basic level: constant folding, redundant
nodes) and `none`. A level is used only if its FP32 logits stay within the configured tolerance
of the exported model; otherwise the next lower one is.

The residual connections are deliberately *not* fused into SkipLayerNormalization: ONNX Runtime's
CPU kernel for it is about 7x slower than the Add + LayerNormalization it replaces (1.44 vs
0.21 ms for 12 of them at 64 x 384 on one core, ORT 1.32), which made it the largest op of the
INT8 graph. The fused graph keeps each residual Add as an equivalent two-input `Sum`, which ORT's
own SkipLayerNormFusion (at session load, level 2) does not match, so every consumer of the
package (our loader, Optimum, a plain InferenceSession) runs the fast path.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trainflow.convert.onnx_model import Inputs, OnnxTextModel, input_feed, tokenize_batches
from trainflow.core.config import RecipeConfig
from trainflow.training.families import attention_fusion_problem, family_of, ort_optimizer_type

log = logging.getLogger(__name__)

LEVELS = ("attention", "fused", "basic", "none")


class TextCalibrationReader:
    """onnxruntime CalibrationDataReader over tokenized calibration texts (one per batch).

    `fixed_length` pads every text to `max_length`: histogram calibrators (entropy, percentile)
    concatenate batches and need one shape.
    """

    def __init__(
        self, tokenizer: object, texts: list, max_length: int, input_names: list[str], fixed_length: bool = False
    ) -> None:
        """`texts`: strings, or (text, pair text) tuples of a pair task."""
        if fixed_length:
            self._batches = []
            for text in texts:
                pair = {} if isinstance(text, str) else {"text_pair": [text[1]]}
                first = text if isinstance(text, str) else text[0]
                enc = tokenizer(  # type: ignore[operator]
                    [first], truncation=True, max_length=max_length, padding="max_length", return_tensors="np", **pair
                )
                self._batches.append({name: input_feed(enc, name) for name in input_names})
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


# --- graph preparation ----------------------------------------------------------------------


def residual_adds_as_sum(model: onnx.ModelProto) -> int:
    """Turn each residual Add that feeds a LayerNormalization (two computed inputs, no constant)
    into a two-input Sum, in place; return how many. Same arithmetic, but ORT's session-time
    SkipLayerNormFusion only matches Add (see the module docstring for why that matters)."""
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "LayerNormalization":
            continue
        add = producer.get(node.input[0])
        if add is not None and add.op_type == "Add" and not any(i in inits for i in add.input):
            add.op_type = "Sum"
            changed += 1
    return changed


HEADS_KEYS = ("num_attention_heads", "n_heads", "n_head")  # config.json names across families
HIDDEN_KEYS = ("hidden_size", "dim", "n_embd", "d_model")


class NoFusion(Exception):
    """ONNX Runtime's transformer optimizer has no safe fusions for this graph (the reason)."""


def _first(cfg: dict[str, Any], keys: Sequence[str]) -> int:
    return next((int(cfg[k]) for k in keys if isinstance(cfg.get(k), int)), 0)


def _fuse_transformer(fp32_path: Path, out_path: Path, *, attention: bool) -> dict[str, int]:
    """ONNX Runtime's transformer fusions for the model's family (trainflow/training/families.py
    names the optimizer type: BERT's fusions for encoders, GPT-2's for GPT-2): EmbedLayerNorm,
    BiasGelu, LayerNorm, and Attention when `attention`; residual Adds kept as Sum, not
    SkipLayerNorm. Returns the fused operator counts, `ResidualSum` for the residual connections
    rewritten.

    Raises:
        NoFusion: the family has no optimizer type, or the optimizer fused nothing.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    cfg_file = fp32_path.parent / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    family = str(cfg.get("model_type", "bert"))
    model_type = ort_optimizer_type(family)
    if model_type is None:
        spec = family_of(family)
        raise NoFusion(f"{family}: {spec.note if spec and spec.note else 'no ONNX Runtime fusions known for it'}")
    if attention and (why := attention_fusion_problem(family)):
        raise NoFusion(f"{family}: {why}")
    options = FusionOptions(model_type)
    options.enable_attention = attention
    options.enable_skip_layer_norm = False
    optimized = optimize_model(
        str(fp32_path),
        model_type=model_type,
        num_heads=_first(cfg, HEADS_KEYS),
        hidden_size=_first(cfg, HIDDEN_KEYS),
        optimization_options=options,
        opt_level=0,
    )
    stats = getattr(optimized, "get_fused_operator_statistics", None)
    fusions = {k: v for k, v in (stats() if stats else {}).items() if v}
    if not fusions:
        raise NoFusion(f"{family}: ONNX Runtime's {model_type} optimizer fused nothing in this graph")
    if attention and not fusions.get("Attention"):
        raise NoFusion(f"{family}: ONNX Runtime's {model_type} optimizer found no attention to fuse ({fusions})")
    sums = residual_adds_as_sum(optimized.model)
    if sums:
        fusions["ResidualSum"] = sums
    optimized.save_model_to_file(str(out_path))
    return fusions


def prepare_graph(
    *, fp32_path: Path, out_path: Path, level: str, tokenizer: object, texts: Inputs, max_length: int, atol: float
) -> dict[str, object]:
    """Write the graph the recipes quantize: `level` of graph optimization (see the module
    docstring) plus ONNX Runtime's shape inference (`quant_pre_process`, which the static QDQ
    quantizer needs; the `attention` level is quantized only dynamically, which infers what it
    needs itself: the same model, 3 s less). A level is kept only if FP32 logits on `texts` stay
    within `atol` of the exported model (the parity gate of the fusions); otherwise the next lower
    level is tried. Returns what was done, the fusions applied included."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reference = OnnxTextModel(fp32_path, tokenizer, max_length).logits(texts)
    tried: list[dict[str, object]] = []
    for candidate in LEVELS[LEVELS.index(level) :]:
        fusions: dict[str, int] = {}
        source = fp32_path
        if candidate in ("attention", "fused"):
            source = out_path.with_name(f"{out_path.stem}.fused.onnx")
            try:
                fusions = _fuse_transformer(fp32_path, source, attention=candidate == "attention")
            except Exception as err:  # noqa: BLE001 - any optimizer failure: the next lower level, with the reason
                reason = str(err) if isinstance(err, NoFusion) else f"{type(err).__name__}: {err}"
                log.warning("INT8 graph level %r not used (%s); trying the next lower level", candidate, reason)
                tried.append({"level": candidate, "error": reason})
                source.unlink(missing_ok=True)
                continue
            log.info("INT8 graph level %r: fused %s", candidate, fusions)
        if candidate == "attention":
            source.replace(out_path)
        else:
            quant_pre_process(str(source), str(out_path), skip_optimization=candidate == "none", auto_merge=True)
            if source != fp32_path:
                source.unlink()
        diff = float(np.abs(OnnxTextModel(out_path, tokenizer, max_length).logits(texts) - reference).max())
        tried.append({"level": candidate, "max_abs_diff": diff, "fusions": fusions})
        if diff <= atol or candidate == "none":
            if candidate != level:
                log.warning("graph optimization %r not used; used %r (tried: %s)", level, candidate, tried)
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
    embedding_nodes = quantize_embeddings(out_path) if recipe.embeddings == "int8" else []
    return {
        **recipe.model_dump(),
        "format": "QDQ",
        "excluded_nodes": excluded,
        "fp32_inputs_restored": restored,
        "quantized_nodes": None if nodes is None else len(nodes),
        "calibration_samples": len(reader.batches),
        "int8_embedding_nodes": embedding_nodes,
    }


EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")


def quantize_embeddings(path: Path) -> list[str]:
    """Store the embedding tables of `path` (Gather and EmbedLayerNormalization weights) in 8 bits,
    in place; return the nodes changed. Weight-only: ONNX Runtime dequantizes just the rows a text
    looks up (a table dequantized whole at every call, as QDQ would do, halved the speed), and no
    activation is quantized, so a text's answer does not depend on its batch-mates."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(path), load_external_data=False).graph
    tables = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    targets = [n.name for n in graph.node if (n.op_type == "Gather" and n.input[0] in tables)
               or n.op_type == "EmbedLayerNormalization"]  # fmt: skip
    if not targets:
        return []
    tmp = path.with_name(f"{path.stem}.emb.onnx")
    with _without_preprocess_advice():
        quantize_dynamic(
            str(path),
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=False,
            reduce_range=False,
            op_types_to_quantize=list(EMBEDDING_OPS),
            nodes_to_quantize=targets,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    tmp.replace(path)
    return targets


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


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "consider to run pre-processing" not in record.getMessage()


@contextmanager
def _without_preprocess_advice() -> Iterator[None]:
    """ORT's quantizer warns on the root logger that a graph was not pre-processed; the dynamic
    recipes need no pre-processing (prepare_graph), so that advice would only mislead."""
    drop = _DropPreprocessAdvice()
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


def quantize_dynamic_int8(
    *, model_path: Path, out_path: Path, recipe: RecipeConfig, exclude_nodes: Sequence[str] = ()
) -> dict[str, object]:
    """Write a dynamically quantized model of `model_path` (weights INT8 now, activations quantized
    per batch at run time): on the attention-fused graph, MatMul becomes MatMulInteger (ORT fuses
    it to DynamicQuantizeMatMul), Attention QAttention, EmbedLayerNormalization its quantized
    form, so every weight, the embedding tables included, is stored in 8 bits."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(model_path), load_external_data=False).graph
    excluded = sorted(set(matching_nodes(graph, recipe.exclude_node_patterns)) | set(exclude_nodes))
    with _without_preprocess_advice():
        quantize_dynamic(
            str(model_path),
            str(out_path),
            weight_type=getattr(QuantType, recipe.weight_type),
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            op_types_to_quantize=list(recipe.op_types),
            nodes_to_exclude=excluded,
            # A fused graph holds ops whose output types ORT's quantizer cannot infer.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    targets = [n.name for n in graph.node if n.op_type in recipe.op_types and n.name not in excluded]
    return {**recipe.model_dump(), "format": "dynamic", "excluded_nodes": excluded, "quantized_nodes": len(targets)}


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
