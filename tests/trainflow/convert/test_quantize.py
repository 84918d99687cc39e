"""The INT8 recipe search: every recipe builds a valid QDQ model, exclusions really stay FP32,
per-layer sensitivity finds the layer that INT8 breaks, the search skips failing recipes and
keeps a passing one, and the gate fails the run (listing every recipe) when none passes."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from transformers import AutoTokenizer

from tests.tiny import rt_texts
from trainflow.convert import int8 as int8_module
from trainflow.convert.export import export_onnx
from trainflow.convert.int8 import (
    TextCalibrationReader,
    count_nodes,
    layer_sensitivity,
    prepare_graph,
    quantize_dynamic_int8,
    quantize_static_int8,
    weight_nodes,
)
from trainflow.convert.onnx_model import OnnxTextModel, tokenize_batches
from trainflow.convert.quantize import INT8_FILE, SEARCH_DIR, quantize_and_gate
from trainflow.core.config import (
    FF2_PATTERN,
    ExportConfig,
    QuantizeConfig,
    RecipeConfig,
    default_recipes,
    parse_config_dict,
)
from trainflow.core.errors import ConfigError, QuantizationAccuracyError
from trainflow.data.dataset import SplitData
from trainflow.training.modeling import build_model, save_model

CALIBRATION = rt_texts(16)
TEST_TEXTS = rt_texts(300)[200:296]  # disjoint from the calibration texts
FRAGILE_NODE = "/bert/encoder/layer.1/attention/output/dense/MatMul"
# Recipes with a fast search: one latency pass over a few texts.
FAST = {"latency_samples": 8, "latency_rounds": 1}


def _split(texts: list[str], labels: np.ndarray | list[int]) -> SplitData:
    return SplitData([str(i) for i in range(len(texts))], texts, [int(x) for x in labels])


@pytest.fixture(scope="module")
def mixing_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny BERT with unit-gain random linear layers (std 1/sqrt(fan_in)), exported to ONNX.

    The tiny fixture model barely mixes tokens (weights of std 0.02): its logits vary by ~1e-4
    between texts, below any INT8 noise, so no recipe could preserve its predictions. Here the
    output depends on the input (margin spread ~0.1) and INT8 can be right or wrong about it.
    """
    folder = tmp_path_factory.mktemp("mixing")
    model = build_model(task="classification", labels=["rotten", "fresh"], base=str(tiny_model_dir))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.hf.modules():  # type: ignore[attr-defined]
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, module.in_features**-0.5, generator=gen)
                module.bias.normal_(0, 0.1, generator=gen)
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), folder / "model")
    export_onnx(model_dir=folder / "model", out_dir=folder / "onnx", export=ExportConfig())
    return folder / "onnx"


def _edit(model: onnx.ModelProto, name: str, fn) -> None:  # type: ignore[no-untyped-def]
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(init).copy()), name))


def _make_fragile(src: Path, dst: Path, channel: int = 3, factor: float = 1000.0) -> None:
    """Rescale one attention channel of layer 1 so that the FP32 function is unchanged but one
    weight MatMul becomes INT8-hostile: value weights and bias of `channel` x factor (per-channel
    weights absorb that), attention-output weights of that row / factor. The attention-output
    MatMul then reads an activation with one channel `factor` times larger than the rest (one
    per-tensor activation scale wipes out the others) and a weight row `factor` times smaller."""
    model = onnx.load(str(src))
    nodes = {n.name: n for n in model.graph.node}
    value = nodes["/bert/encoder/layer.1/attention/self/value/MatMul"]
    bias_add = next(n for n in model.graph.node if n.op_type == "Add" and value.output[0] in n.input)
    inits = {i.name for i in model.graph.initializer}
    bias = next(i for i in bias_add.input if i in inits)

    def scale_column(w: np.ndarray) -> np.ndarray:
        w[:, channel] *= factor
        return w

    def scale_entry(b: np.ndarray) -> np.ndarray:
        b[channel] *= factor
        return b

    def shrink_row(w: np.ndarray) -> np.ndarray:
        w[channel] /= factor
        return w

    _edit(model, value.input[1], scale_column)
    _edit(model, bias, scale_entry)
    _edit(model, nodes[FRAGILE_NODE].input[1], shrink_row)
    onnx.save(model, str(dst))


def _centre(path: Path, tok: object, texts: list[str]) -> SplitData:
    """Shift the classifier bias so that half the texts fall on each side, then keep the half
    with the clearest FP32 margin as the test split, labelled by FP32.

    Benign INT8 rounding (whose exact size depends on the CPU's kernels and thread count) flips
    texts that sit on the decision boundary; only an INT8-hostile layer flips clear ones, so the
    gate's verdict on this split is about that layer, not about the machine."""
    logits = OnnxTextModel(path, tok, 32).logits(texts)
    shift = float(np.median(logits[:, 1] - logits[:, 0]))
    model = onnx.load(str(path))
    bias = next(i.name for i in model.graph.initializer if "classifier.bias" in i.name)
    _edit(model, bias, lambda b: b + np.array([0.0, -shift], np.float32))
    onnx.save(model, str(path))
    logits = OnnxTextModel(path, tok, 32).logits(texts)
    margin = logits[:, 1] - logits[:, 0]
    clear: list[int] = []
    for side in (margin > 0, margin <= 0):  # the clearer half of each side: balanced labels
        idx = np.flatnonzero(side)
        clear += idx[np.argsort(-np.abs(margin[idx]))][: len(idx) // 2].tolist()
    clear.sort()
    labels = (margin[clear] > 0).astype(int)
    assert abs(labels.mean() - 0.5) < 0.05, labels
    return _split([texts[i] for i in clear], labels)


@pytest.fixture
def fragile(tmp_path: Path, mixing_onnx: Path) -> tuple[Path, object, SplitData]:
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(mixing_onnx, onnx_dir)
    tok = AutoTokenizer.from_pretrained(onnx_dir)
    before = OnnxTextModel(onnx_dir / "model.onnx", tok, 32).logits(TEST_TEXTS)
    _make_fragile(onnx_dir / "model.onnx", onnx_dir / "model.onnx")
    after = OnnxTextModel(onnx_dir / "model.onnx", tok, 32).logits(TEST_TEXTS)
    np.testing.assert_allclose(after, before, atol=1e-4)  # same FP32 function
    test = _centre(onnx_dir / "model.onnx", tok, TEST_TEXTS)
    return onnx_dir / "model.onnx", tok, test


def _search(model: Path, tok: object, test: SplitData, recipes: list[RecipeConfig], drop: float = 0.1, **q_extra):  # type: ignore[no-untyped-def]
    # The fragile layer is built on the basic graph: the static recipes quantize that one here.
    q = QuantizeConfig(max_accuracy_drop=drop, recipes=recipes, **{**FAST, "graph_optimization": "basic", **q_extra})
    return quantize_and_gate(fp32_path=model, tokenizer=tok, task="classification", n_classes=2, cutpoints=None,
                             calibration=_split(CALIBRATION, [0] * len(CALIBRATION)),
                             test=test, max_length=32, q=q)  # fmt: skip


# --- each recipe builds a valid model -----------------------------------------------------------


def _inputs_from_dq(graph: onnx.GraphProto, node_name: str) -> list[bool]:
    producers = {o: n.op_type for n in graph.node for o in n.output}
    node = next(n for n in graph.node if n.name == node_name)
    return [producers.get(i) == "DequantizeLinear" for i in node.input]


@pytest.mark.parametrize("recipe", [r for r in default_recipes() if r.mode == "static"], ids=lambda r: r.name)
def test_each_default_static_recipe_builds_a_valid_qdq_model(
    tmp_path: Path, tiny_onnx: Path, recipe: RecipeConfig
) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_onnx)
    prepared = tmp_path / "prepared.onnx"
    prepare_graph(fp32_path=tiny_onnx / "model.onnx", out_path=prepared, level="basic", tokenizer=tok,
                  texts=CALIBRATION, max_length=32, atol=1e-4)  # fmt: skip
    fp32_graph = onnx.load(str(prepared)).graph
    names = [i.name for i in fp32_graph.input]
    reader = TextCalibrationReader(tok, CALIBRATION, 32, names, fixed_length=recipe.calibration_method != "minmax")
    extra: list[str] = []
    if recipe.keep_fp32_top_k:
        base = tmp_path / "base.onnx"
        quantize_static_int8(model_path=prepared, out_path=base, reader=reader, recipe=recipe)
        feeds = [f for _, f in tokenize_batches(tok, CALIBRATION, 32, 8, names)]
        ranking = layer_sensitivity(model_path=prepared, int8_path=base, feeds=feeds)
        assert len(ranking) == 12 and all(v >= 0 for v in ranking.values())
        extra = list(ranking)[: recipe.keep_fp32_top_k]
    out = tmp_path / "q.onnx"
    info = quantize_static_int8(model_path=prepared, out_path=out, reader=reader, recipe=recipe, exclude_nodes=extra)

    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    # 2 layers x (Q, K, V, attention output, FF1, FF2) weight MatMuls; attention's activation x
    # activation MatMuls are never quantized.
    weights = weight_nodes(fp32_graph, ["MatMul"])
    assert len(weights) == 12
    excluded = set(info["excluded_nodes"])  # type: ignore[arg-type]
    expected_fp32 = {n for n in weights if "/output/dense/" in n and "attention" not in n}
    if recipe.exclude_node_patterns:
        assert expected_fp32 <= excluded
    by_pattern = len(expected_fp32) if recipe.exclude_node_patterns else 0
    assert len(excluded) == by_pattern + recipe.keep_fp32_top_k
    quantized = [n for n in weights if n not in excluded]
    assert info["quantized_nodes"] == len(quantized)
    # Only inputs are quantized: one Q/DQ pair per distinct activation, one DQ per weight.
    by_name = {n.name: n for n in fp32_graph.node}
    activations = {by_name[n].input[0] for n in quantized}
    counts = count_nodes(out)
    embedding_nodes = info["int8_embedding_nodes"]
    assert bool(embedding_nodes) == (recipe.embeddings == "int8")
    assert counts["QuantizeLinear"] == len(activations)
    assert counts["DequantizeLinear"] == len(activations) + len(quantized) + len(embedding_nodes)
    before = count_nodes(prepared)
    # Quantizing the embeddings rewrites the head's Gemm nodes as the MatMul + Add they are (FP32).
    assert counts["MatMul"] + counts.get("Gemm", 0) == before["MatMul"] + before.get("Gemm", 0)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    act_dtype = np.uint8 if recipe.activation_type == "QUInt8" else np.int8
    for name in quantized:
        assert _inputs_from_dq(model.graph, name) == [True, True], f"{name} must read DequantizeLinear"
        weight_dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0]
                         == next(x for x in model.graph.node if x.name == name).input[1])  # fmt: skip
        w = inits[weight_dq.input[0]]
        assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= (64 if recipe.reduce_range else 127)
        assert inits[weight_dq.input[1]].shape == (w.shape[1],), "per-channel scales, one per output column"
    for gather in (n for n in model.graph.node if n.op_type == "Gather" and n.name in embedding_nodes):
        assert inits[gather.input[0]].dtype in (np.int8, np.uint8), "an 8-bit table, dequantized after the lookup"
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == act_dtype for z in zero_points)
    for name in excluded:
        assert _inputs_from_dq(model.graph, name) == [False, False], f"{name} must stay FP32"
        weight = next(x for x in model.graph.node if x.name == name).input[1]
        assert inits[weight].dtype == np.float32
    # Nothing but the quantized MatMuls reads a dequantized activation: not an excluded MatMul
    # sharing its input with a quantized one, not the residual Add beside FF1.
    readers = {n.name for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
               and any(_inputs_from_dq(model.graph, n.name))}  # fmt: skip
    # ...but what reads an 8-bit embedding row after its lookup (the embeddings' sums).
    looked_up = {o for n in model.graph.node if n.name in embedding_nodes for o in n.output}
    rows = {
        o for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in looked_up for o in n.output
    }
    embedding_readers = {n.name for n in model.graph.node if set(n.input) & rows}
    assert readers == set(quantized) | embedding_readers


@pytest.mark.parametrize("recipe", [r for r in default_recipes() if r.mode == "dynamic"], ids=lambda r: r.name)
def test_each_default_dynamic_recipe_quantizes_the_fused_graph_embeddings_included(
    tmp_path: Path, tiny_onnx: Path, recipe: RecipeConfig
) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_onnx)
    prepared, out = tmp_path / "prepared.onnx", tmp_path / "q.onnx"
    info = prepare_graph(fp32_path=tiny_onnx / "model.onnx", out_path=prepared, level="attention", tokenizer=tok,
                         texts=CALIBRATION, max_length=32, atol=1e-4)  # fmt: skip
    assert info["applied"] == "attention"
    assert info["fusions"]["Attention"] == 2 and info["fusions"]["EmbedLayerNormalization"] == 1
    assert info["fusions"]["ResidualSum"] == 4 and info["max_abs_diff"] <= 1e-4
    detail = quantize_dynamic_int8(model_path=prepared, out_path=out, recipe=recipe)
    onnx.checker.check_model(onnx.load(str(out)))
    counts = count_nodes(out)
    assert counts["QAttention"] == 2 and counts["QEmbedLayerNormalization"] == 1
    ff2 = 2 if recipe.exclude_node_patterns else 0
    assert counts["MatMulInteger"] == 2 * 3 - ff2 + 2, "per layer attention output, FF1, FF2; pooler, classifier"
    assert len(detail["excluded_nodes"]) == ff2  # type: ignore[arg-type]
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    embeddings = [v for k, v in inits.items() if v.ndim == 2 and v.shape[0] == tok.vocab_size]
    assert embeddings and all(v.dtype in (np.int8, np.uint8) for v in embeddings), "the word embeddings are INT8"


def _session_ops(path: Path) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime actually runs (its level-2 fusions applied)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(path.with_name(path.stem + ".session.onnx"))
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return count_nodes(Path(opts.optimized_model_filepath))


def test_dynamic_int8_runs_without_skip_layer_norm_and_residual_sum_keeps_logits(
    tmp_path: Path, tiny_onnx: Path
) -> None:
    """ORT's SkipLayerNormalization CPU kernel is ~7x slower than Add + LayerNormalization; the
    prepared graph keeps residual Adds as Sum so that not even ORT's session-time fusion makes one,
    and the rewrite changes no logit."""
    tok = AutoTokenizer.from_pretrained(tiny_onnx)
    prepared, out = tmp_path / "prepared.onnx", tmp_path / "q.onnx"
    prepare_graph(fp32_path=tiny_onnx / "model.onnx", out_path=prepared, level="attention", tokenizer=tok,
                  texts=CALIBRATION, max_length=32, atol=1e-4)  # fmt: skip
    dyn = next(r for r in default_recipes() if r.name == "dyn-u8s8")
    quantize_dynamic_int8(model_path=prepared, out_path=out, recipe=dyn)
    for path in (prepared, out):
        ops = _session_ops(path)
        assert ops.get("Sum") == 4 and ops.get("LayerNormalization") == 4
        assert "SkipLayerNormalization" not in ops

    as_add = onnx.load(str(prepared))
    for node in as_add.graph.node:
        if node.op_type == "Sum":
            node.op_type = "Add"
    onnx.save(as_add, str(tmp_path / "as_add.onnx"))
    assert _session_ops(tmp_path / "as_add.onnx").get("SkipLayerNormalization") == 4, "ORT would fuse Add"
    texts = TEST_TEXTS[:16]
    fused = OnnxTextModel(tmp_path / "as_add.onnx", tok, 32).logits(texts)
    assert np.abs(OnnxTextModel(prepared, tok, 32).logits(texts) - fused).max() <= 1e-5


def test_excluded_node_sharing_an_input_with_quantized_ones_reads_fp32(tmp_path: Path, tiny_onnx: Path) -> None:
    """V shares its input with Q and K; ORT's quantizer rewires every consumer of a quantized
    activation to its DequantizeLinear, so V would read INT8-rounded values unless restored."""
    tok = AutoTokenizer.from_pretrained(tiny_onnx)
    prepared, out = tmp_path / "prepared.onnx", tmp_path / "q.onnx"
    prepare_graph(fp32_path=tiny_onnx / "model.onnx", out_path=prepared, level="basic", tokenizer=tok,
                  texts=CALIBRATION, max_length=32, atol=1e-4)  # fmt: skip
    names = [i.name for i in onnx.load(str(prepared)).graph.input]
    recipe = RecipeConfig(name="v-fp32", exclude_node_patterns=[r"attention/self/value/MatMul$"])
    info = quantize_static_int8(model_path=prepared, out_path=out, reader=TextCalibrationReader(tok, CALIBRATION, 32,
                                names), recipe=recipe)  # fmt: skip
    graph = onnx.load(str(out)).graph
    for layer in range(2):
        prefix = f"/bert/encoder/layer.{layer}/attention/self/"
        assert _inputs_from_dq(graph, prefix + "value/MatMul") == [False, False]
        assert _inputs_from_dq(graph, prefix + "query/MatMul") == [True, True]
        assert _inputs_from_dq(graph, prefix + "key/MatMul") == [True, True]
    # 2 layers x (V input beside Q/K, residual Adds beside attention-output and FF1 inputs, ...).
    assert info["fp32_inputs_restored"] >= 2
    onnx.checker.check_model(onnx.load(str(out)))
    reference = OnnxTextModel(prepared, tok, 32).logits(TEST_TEXTS[:8])
    np.testing.assert_allclose(OnnxTextModel(out, tok, 32).logits(TEST_TEXTS[:8]), reference, atol=0.5)


# --- sensitivity, search and gate ---------------------------------------------------------------


def test_sensitivity_finds_the_layer_int8_breaks(tmp_path: Path, fragile: tuple[Path, object, SplitData]) -> None:
    model, tok, _ = fragile
    prepared = tmp_path / "prepared.onnx"
    prepare_graph(fp32_path=model, out_path=prepared, level="basic", tokenizer=tok, texts=CALIBRATION,
                  max_length=32, atol=1e-4)  # fmt: skip
    names = [i.name for i in onnx.load(str(prepared)).graph.input]
    base = tmp_path / "base.onnx"
    quantize_static_int8(model_path=prepared, out_path=base, reader=TextCalibrationReader(tok, CALIBRATION, 32, names),
                         recipe=RecipeConfig(name="naive"))  # fmt: skip
    feeds = [f for _, f in tokenize_batches(tok, CALIBRATION, 32, 8, names)]
    ranking = layer_sensitivity(model_path=prepared, int8_path=base, feeds=feeds)
    worst, second = list(ranking.items())[:2]
    assert worst[0] == FRAGILE_NODE
    assert worst[1] > 10 * second[1], ranking


@pytest.mark.parametrize("threads", [1, 4])  # ORT's kernels split work by thread count: same verdict
def test_search_skips_failing_recipes_and_keeps_the_passing_one(
    fragile: tuple[Path, object, SplitData], threads: int
) -> None:
    model, tok, test = fragile
    recipes = [
        RecipeConfig(name="naive"),
        RecipeConfig(name="ff2-fp32", exclude_node_patterns=[FF2_PATTERN]),  # the wrong layers
        RecipeConfig(name="sensitive1-fp32", keep_fp32_top_k=1),
    ]
    result = _search(model, tok, test, recipes, intra_op_threads=threads)
    table = {row["name"]: row for row in result.search}
    assert list(table) == ["naive", "ff2-fp32", "sensitive1-fp32"]
    # The broken recipes are ruled out on the screening texts (or by the gate), without timing.
    assert table["naive"]["status"] in ("screened-out", "failed") and not table["naive"]["passed"], table
    assert table["ff2-fp32"]["status"] in ("screened-out", "failed") and not table["ff2-fp32"]["passed"], table
    assert table["naive"]["screen_accuracy"] is not None and table["naive"]["p50_ms"] is None, "not timed"
    assert table["sensitive1-fp32"]["passed"] and table["sensitive1-fp32"]["accuracy_drop"] <= 0.1, table
    assert table["sensitive1-fp32"]["p50_ms"] > 0 and table["sensitive1-fp32"]["fp32_p50_ms"] > 0
    assert result.chosen == "sensitive1-fp32" and result.primary in ("int8", "fp32")
    assert table["sensitive1-fp32"]["status"] == ("chosen" if result.primary == "int8" else "passed")
    assert result.recipe["kept_fp32_by_sensitivity"] == [FRAGILE_NODE]
    assert result.int8_metrics["accuracy"] == table["sensitive1-fp32"]["accuracy"]
    int8 = onnx.load(result.int8_path)
    assert _inputs_from_dq(int8.graph, FRAGILE_NODE) == [False, False]
    assert result.session_options["intra_op_num_threads"] == threads
    assert result.graph_optimization["applied"] == "basic"
    assert {r["model"] for r in result.serving["table"]} == {"fp32", "int8"}
    assert result.serving["best"]["batch1"]["threads"] in result.serving["threads"]
    assert not list((model.parent / SEARCH_DIR).glob("*.onnx")), "losing candidates are removed"


def test_gate_fails_the_run_when_no_recipe_passes(fragile: tuple[Path, object, SplitData]) -> None:
    model, tok, test = fragile
    recipes = [RecipeConfig(name="naive"), RecipeConfig(name="ff2-fp32", exclude_node_patterns=[FF2_PATTERN])]
    with pytest.raises(QuantizationAccuracyError) as info:
        _search(model, tok, test, recipes)
    msg = str(info.value)
    assert "no INT8 recipe keeps test accuracy within 10.00 points" in msg
    for name in ("naive", "ff2-fp32"):
        assert f"  - {name}: " in msg
    rows = [line for line in msg.splitlines() if line.startswith("  - ")]
    assert len(rows) == 2 and all(r.endswith("failed") or "screened-out (screening accuracy" in r for r in rows), rows
    assert not (model.parent / INT8_FILE).exists(), "nothing to publish"
    assert (model.parent / SEARCH_DIR / "naive.onnx").is_file(), "candidates kept for inspection"


def test_search_false_tries_only_the_first_recipe(tmp_path: Path, tiny_onnx: Path, caplog) -> None:
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_onnx, onnx_dir)
    tok = AutoTokenizer.from_pretrained(onnx_dir)
    labels = OnnxTextModel(onnx_dir / "model.onnx", tok, 32).logits(TEST_TEXTS).argmax(1)
    q = QuantizeConfig(max_accuracy_drop=1.0, search=False, **FAST)
    with caplog.at_level(logging.INFO, logger="trainflow.convert.quantize"):
        result = quantize_and_gate(fp32_path=onnx_dir / "model.onnx", tokenizer=tok, task="classification",
                                   n_classes=2, cutpoints=None, calibration=_split(CALIBRATION, [0] * 16),
                                   test=_split(TEST_TEXTS, labels), max_length=32, q=q)  # fmt: skip
    assert [row["name"] for row in result.search] == [default_recipes()[0].name] == [result.chosen]
    assert f"INT8 search: recipe 1 of 1 ({result.chosen})" in caplog.text, "long steps show their progress"
    assert Path(result.int8_path).name == INT8_FILE


def test_the_search_stops_at_the_first_recipe_that_passes_and_beats_fp32(monkeypatch) -> None:
    import trainflow.convert.quantize as q

    outcomes = {  # name: (passed, p50 ms); FP32 takes 10 ms
        "slow-but-accurate": (True, 12.0),
        "broken": (False, None),
        "fast": (True, 6.0),
        "never-tried": (True, 1.0),
    }

    def fake_evaluate(search, ref, recipe):
        passed, _ = outcomes[recipe.name]
        return {"name": recipe.name, "passed": passed, "status": "passed" if passed else "failed"}, {"accuracy": 0.9}

    def fake_time(search, ref, row, texts):
        row.update(p50_ms=outcomes[row["name"]][1], fp32_p50_ms=10.0)

    monkeypatch.setattr(q, "_evaluate", fake_evaluate)
    monkeypatch.setattr(q, "_time", fake_time)
    search = type("S", (), {"q": QuantizeConfig()})()
    recipes = [RecipeConfig(name=n) for n in outcomes]
    rows, _, chosen, faster = q._search(search, None, recipes, [])
    assert (chosen, faster) == ("fast", True)
    assert [r["status"] for r in rows] == ["passed", "failed", "chosen"], "the last recipe is never built"
    table = q._finish_rows(rows, recipes)
    assert table[-1].status == "not-tried"
    outcomes.update(fast=(True, 11.0), **{"never-tried": (True, 10.5)})
    rows, _, chosen, faster = q._search(search, None, recipes, [])
    assert (chosen, faster) == ("never-tried", False), "none beats FP32: the fastest that passed, FP32 primary"


# --- graph optimization ------------------------------------------------------------------------


def test_fused_graph_is_used_only_while_fp32_parity_holds(
    tmp_path: Path, mixing_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = AutoTokenizer.from_pretrained(mixing_onnx)
    kwargs = {"fp32_path": mixing_onnx / "model.onnx", "out_path": tmp_path / "p.onnx", "level": "fused",
              "tokenizer": tok, "texts": TEST_TEXTS[:16], "max_length": 32, "atol": 1e-4}  # fmt: skip
    done = prepare_graph(**kwargs)  # type: ignore[arg-type]
    assert done["applied"] == "fused" and done["max_abs_diff"] <= 1e-4  # type: ignore[operator]
    # Both residual connections of each of the 2 layers, and (no EmbedLayerNorm without
    # attention fusion here) the embeddings' sum before their LayerNorm.
    assert done["fusions"]["ResidualSum"] == 5  # type: ignore[index]
    assert count_nodes(tmp_path / "p.onnx").get("Sum") == 5

    real = int8_module._fuse_transformer

    def drifting(fp32_path: Path, out_path: Path, *, attention: bool) -> dict[str, int]:
        fusions = real(fp32_path, out_path, attention=attention)
        model = onnx.load(str(out_path))
        bias = next(i.name for i in model.graph.initializer if "classifier.bias" in i.name)
        _edit(model, bias, lambda b: b + np.float32(0.01))
        onnx.save(model, str(out_path))
        return fusions

    monkeypatch.setattr(int8_module, "_fuse_transformer", drifting)
    done = prepare_graph(**kwargs)  # type: ignore[arg-type]
    assert done["applied"] == "basic"
    assert [t["level"] for t in done["tried"]] == ["fused", "basic"]  # type: ignore[union-attr]
    assert done["tried"][0]["max_abs_diff"] == pytest.approx(0.01, rel=1e-3)  # type: ignore[index]
    assert "Sum" not in count_nodes(tmp_path / "p.onnx")


# --- config ------------------------------------------------------------------------------------


def test_recipe_config_problems_are_reported_at_once(tiny_cfg: dict) -> None:
    tiny_cfg["quantize"] = {
        "recipes": [
            {"name": "a", "activation_type": "QInt8", "weight_type": "QUInt8"},
            {"name": "a", "exclude_node_patterns": ["(unclosed"]},
            {"name": "c", "graph": "attention"},
            {"name": "b", "calibration": "minmax"},
        ]
    }
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg, "t.yaml")
    msg = str(info.value)
    assert "quantize.recipes.3.calibration: unknown key" in msg
    tiny_cfg["quantize"]["recipes"].pop()
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg, "t.yaml")
    problems = info.value.problems
    assert len(problems) == 4, problems
    assert any("(c): graph attention is for dynamic recipes" in p for p in problems)
    assert any("names ['a', 'a', 'c'] repeat" in p for p in problems)
    assert any("QInt8 activations with QUInt8 weights" in p for p in problems)
    assert any("'(unclosed' is not a valid regular expression" in p for p in problems)


def test_a_parallel_search_makes_the_serial_choice(fragile: tuple[Path, object, SplitData]) -> None:
    model, tok, test = fragile
    recipes = [RecipeConfig(name="naive"), RecipeConfig(name="ff2-fp32", exclude_node_patterns=[FF2_PATTERN]),
               RecipeConfig(name="sensitive1-fp32", keep_fp32_top_k=1)]  # fmt: skip
    serial = _search(model, tok, test, recipes)
    parallel = _search(model, tok, test, recipes, parallel=2)
    assert parallel.chosen == serial.chosen == "sensitive1-fp32"
    same = ("name", "passed", "screen_accuracy", "accuracy", "accuracy_drop", "quantized_nodes", "fp32_weight_nodes")
    assert [{k: r[k] for k in same} for r in parallel.search] == [{k: r[k] for k in same} for r in serial.search]
    assert parallel.recipe["kept_fp32_by_sensitivity"] == [FRAGILE_NODE]


def test_a_parallel_wave_of_dynamic_recipes_shares_one_graph_safely(fragile: tuple[Path, object, SplitData]) -> None:
    """Two dynamic recipes of one fused graph evaluated at once: ORT writes a shape-inferred copy
    beside the model it quantizes, so each forked evaluator works on its own link of the graph
    (on the H200 host's 16 cores the shared file raced: FileNotFoundError ...-inferred.onnx)."""
    model, tok, test = fragile
    recipes = [r for r in default_recipes() if r.mode == "dynamic"][:2]
    assert len(recipes) == 2 and len({r.graph_level("basic") for r in recipes}) == 1
    # The fragile model fails both (screened out): the search ends with the gate's error, whose
    # recipe list is the same from one wave of two processes as from one process.
    with pytest.raises(QuantizationAccuracyError) as serial:
        _search(model, tok, test, recipes, drop=0.0)
    with pytest.raises(QuantizationAccuracyError) as parallel:
        _search(model, tok, test, recipes, drop=0.0, parallel=2)
    assert str(parallel.value) == str(serial.value)
    assert str(parallel.value).count("screened-out") == 2 and "error" not in str(parallel.value).split("(1.0000)")[1]


def test_a_recipe_whose_answers_depend_on_batch_mates_is_refused(tmp_path: Path, tiny_onnx: Path) -> None:
    """Dynamic INT8 scales activations per batch: a text's logits move with its batch-mates, which
    the gate measures on the test split (alone vs in batches) and refuses; the static recipe's
    fixed scales keep them still."""
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_onnx, onnx_dir)
    tok = AutoTokenizer.from_pretrained(onnx_dir)
    labels = OnnxTextModel(onnx_dir / "model.onnx", tok, 32).logits(TEST_TEXTS).argmax(1)
    recipes = {r.name: r for r in default_recipes()}
    q = QuantizeConfig(max_accuracy_drop=1.0, max_batch_diff=0.0, batch_check_size=8,
                       recipes=[recipes["dyn-u8s8"], recipes["u8s8"]], **FAST)  # fmt: skip
    result = quantize_and_gate(fp32_path=onnx_dir / "model.onnx", tokenizer=tok, task="classification",
                               n_classes=2, cutpoints=None, calibration=_split(CALIBRATION, [0] * 16),
                               test=_split(TEST_TEXTS, labels), max_length=32, q=q)  # fmt: skip
    dyn, static = result.search
    assert dyn["status"] == "batch-dependent" and dyn["batch_max_diff"] > 0 and not dyn["passed"]
    assert static["batch_max_diff"] == 0.0 and static["batch_label_agreement"] == 1.0
    assert result.chosen == "u8s8" and result.batch_invariance["max_abs_diff"] == 0.0
