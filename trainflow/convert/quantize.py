"""INT8 quantization as a search over recipes behind an accuracy gate, and the serving settings
measured for the package.

`quantize_and_gate`:
1. The FP32 reference: the exported model's metrics on the test split and on its first
   `screen_samples` texts (the screening subset).
2. The recipes in order (`quantize.recipes`, fastest expected first): each is built on its graph
   (prepared once per level, kept only while its FP32 logits match the export: the fusions'
   parity gate), screened on the subset (a drop beyond the gate plus `screen_margin` rules it out
   before the full evaluation), evaluated on the whole test split and gated (drop <=
   `max_accuracy_drop`). A recipe that passes is timed against FP32 at batch 1, turn about; if it
   is faster it is chosen and the search stops.
3. No recipe passes: `QuantizationAccuracyError` listing every recipe tried. Some pass but none
   is faster than FP32: the fastest of those is shipped as `model_int8.onnx` beside the FP32 model,
   and the package's primary model is FP32 (`primary` in the result, said in the log).
4. The thread sweep: the INT8 and FP32 models at 1, 2, 4, ... threads up to the physical cores,
   batch 1 and 32; the package records the table and the best thread count per batch size.

A recipe with `keep_fp32_top_k` first quantizes without those exclusions, ranks the weight nodes
by their own INT8 output error (`layer_sensitivity`), then quantizes again with the k worst in FP32.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trainflow.convert.int8 import (
    TextCalibrationReader,
    count_nodes,
    layer_sensitivity,
    prepare_graph,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from trainflow.convert.onnx_model import (
    Inputs,
    OnnxTextModel,
    SessionSettings,
    cpu_info,
    interleaved_latency_ms,
    physical_cores,
    thread_sweep,
    tokenize_batches,
)
from trainflow.convert.outcome import RecipeOutcome
from trainflow.core.config import QuantizeConfig, RecipeConfig
from trainflow.core.diskspace import ensure_free_space
from trainflow.core.errors import QuantizationAccuracyError, QuantizationError
from trainflow.core.faults import fault_raise
from trainflow.core.layout import INT8_SEARCH_DIR, ONNX_INT8
from trainflow.data.dataset import SplitData
from trainflow.tasks.task import TaskHead

log = logging.getLogger(__name__)

INT8_FILE = ONNX_INT8
SEARCH_DIR = INT8_SEARCH_DIR
FP32_KEY = "FP32 ONNX"  # not a valid recipe name, so it never collides with one
SWEEP_BATCHES = (1, 32)


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
    primary: str = "int8"  # which model the package serves by default: "int8", or "fp32" if no INT8 was faster
    serving: dict[str, Any] = field(default_factory=dict)  # the thread sweep and the best settings
    batch_invariance: dict[str, Any] = field(default_factory=dict)  # the chosen model alone vs batched
    gate_metric: str = "accuracy"  # the test metric the gate held within max_accuracy_drop


def task_head(task: str, n_classes: int, cutpoints: list[float] | None, head: TaskHead | None = None) -> TaskHead:
    """`head` when given, else the head of a classification or ordinal task of `n_classes`."""
    if head is not None:
        return head
    return TaskHead(task, tuple(str(i) for i in range(n_classes)), None if cutpoints is None else tuple(cutpoints))


def evaluate_onnx(
    model: OnnxTextModel, task: str, split: SplitData, n_classes: int, cutpoints: list[float] | None,
    head: TaskHead | None = None,
) -> dict[str, float]:  # fmt: skip
    """The task's metrics of an ONNX model on a split (`head`: what the outputs mean; by default a
    classification or ordinal head of `n_classes`)."""
    return task_head(task, n_classes, cutpoints, head).metrics(split.labels, model.logits(split.inputs))


def batch_invariance(
    model: OnnxTextModel, texts: list, batch_size: int, agree_rows: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> dict[str, Any]:
    """How much a text's outputs depend on its batch-mates: each text scored alone and in batches
    of `batch_size` (padded to their longest text): the largest logit difference and the share of
    texts whose decision (class, label set, value within tolerance) is the same both ways."""
    alone = model.logits(texts, batch_size=1)
    batched = model.logits(texts, batch_size=batch_size)
    agree = float(agree_rows(alone, batched).mean()) if len(texts) else 1.0
    return {"max_abs_diff": float(np.abs(alone - batched).max()) if len(texts) else 0.0, "label_agreement": agree,
            "n": len(texts), "batch_size": batch_size}  # fmt: skip


def _settings_key(recipe: RecipeConfig) -> str:
    """Recipes equal but for `name` and `keep_fp32_top_k` quantize to the same model."""
    return json.dumps(recipe.model_dump(exclude={"name", "keep_fp32_top_k"}), sort_keys=True)


@dataclass
class _Search:
    """One recipe search: the prepared graphs, calibration readers, and what each recipe built."""

    fp32_path: Path
    work: Path
    tokenizer: object
    max_length: int
    settings: SessionSettings
    calibration: SplitData
    parity_texts: Inputs
    q: QuantizeConfig
    graphs: dict[str, tuple[Path, dict[str, object]]] = field(default_factory=dict)
    readers: dict[tuple[str, bool], TextCalibrationReader] = field(default_factory=dict)
    built: dict[str, Path] = field(default_factory=dict)  # settings key -> model without top-k exclusions
    details: dict[str, dict[str, object]] = field(default_factory=dict)
    shared_cache: bool = True  # False in forked evaluators: one calibration cache per recipe

    def graph(self, recipe: RecipeConfig) -> tuple[Path, dict[str, object]]:
        """The prepared graph of the recipe's level (made once per level)."""
        level = recipe.graph_level(self.q.graph_optimization)
        if level not in self.graphs:
            path = self.work / f"prepared-{level}.onnx"
            t0 = time.perf_counter()
            info = prepare_graph(fp32_path=self.fp32_path, out_path=path, level=level, tokenizer=self.tokenizer,
                                 texts=self.parity_texts, max_length=self.max_length,
                                 atol=self.q.graph_optimization_atol)  # fmt: skip
            log.info("INT8 graph %s: applied %s, fusions %s (%.1f s)", level, info["applied"], info["fusions"],
                     time.perf_counter() - t0)  # fmt: skip
            self.graphs[level] = (path, info)
        return self.graphs[level]

    def reader(self, prepared: Path, fixed: bool) -> TextCalibrationReader:
        key = (str(prepared), fixed)
        if key not in self.readers:
            names = [i.name for i in onnx.load(str(prepared), load_external_data=False).graph.input]
            self.readers[key] = TextCalibrationReader(self.tokenizer, self.calibration.inputs, self.max_length, names,
                                                      fixed_length=fixed)  # fmt: skip
        return self.readers[key]

    def _sensitive(self, recipe: RecipeConfig, prepared: Path, reader: TextCalibrationReader, cache: Path) -> dict:
        key = _settings_key(recipe)
        if key not in self.built:
            self.built[key] = self.work / f"{recipe.name}.base.onnx"
            quantize_static_int8(model_path=prepared, out_path=self.built[key], reader=reader, recipe=recipe,
                                 calibration_cache=cache)  # fmt: skip
        texts = self.calibration.inputs[: self.q.sensitivity_samples]
        names = reader.batches[0].keys() if reader.batches else []
        feeds = [f for _, f in tokenize_batches(self.tokenizer, texts, self.max_length, 8, list(names))]
        return layer_sensitivity(model_path=prepared, int8_path=self.built[key], feeds=feeds)

    def build(self, recipe: RecipeConfig) -> Path:
        """Quantize the recipe's prepared graph; record what was quantized."""
        prepared, _ = self.graph(recipe)
        out = self.work / f"{recipe.name}.onnx"
        # A parallel search gives each recipe a hard link of the graph (ORT's quantizers write a
        # shape-inferred copy beside their input: two recipes of one graph would race on it) and
        # one calibration cache per recipe; a serial one shares both.
        source = prepared if self.shared_cache else self.work / f"{recipe.name}.prepared.onnx"
        if source != prepared:
            source.unlink(missing_ok=True)
            os.link(prepared, source)
        try:
            return self._build(recipe, prepared, source, out)
        finally:
            if source != prepared:
                source.unlink(missing_ok=True)

    def calibration_cache(self, recipe: RecipeConfig, prepared: Path) -> Path:
        """Where the recipe's calibration ranges are kept: one file per graph, method and op types
        (shared by the recipes that agree on them), or one per recipe in a parallel search."""
        scope = prepared.stem if self.shared_cache else recipe.name
        return self.work / f"calibration-{scope}-{recipe.calibration_method}-{'-'.join(recipe.op_types)}.json"

    def _build(self, recipe: RecipeConfig, prepared: Path, source: Path, out: Path) -> Path:
        if recipe.mode == "dynamic":
            self.details[recipe.name] = quantize_dynamic_int8(model_path=source, out_path=out, recipe=recipe)
            return out
        reader = self.reader(prepared, recipe.calibration_method != "minmax")
        cache = self.calibration_cache(recipe, prepared)
        sensitivity = self._sensitive(recipe, source, reader, cache) if recipe.keep_fp32_top_k else {}
        extra = list(sensitivity)[: recipe.keep_fp32_top_k]
        detail = quantize_static_int8(model_path=source, out_path=out, reader=reader, recipe=recipe,
                                      exclude_nodes=extra, calibration_cache=cache)  # fmt: skip
        if recipe.keep_fp32_top_k == 0:
            self.built.setdefault(_settings_key(recipe), out)
        if sensitivity:
            detail["sensitivity"] = {k: float(f"{v:.3g}") for k, v in sensitivity.items()}
            detail["kept_fp32_by_sensitivity"] = extra
        self.details[recipe.name] = detail
        return out

    def model(self, path: Path) -> OnnxTextModel:
        return OnnxTextModel(path, self.tokenizer, self.max_length, settings=self.settings)


@dataclass
class _Reference:
    """The FP32 model and what the gate compares against."""

    model: OnnxTextModel
    metrics: dict[str, float]
    screen_accuracy: float  # the gate metric on the screening texts
    evaluate: Callable[[OnnxTextModel, SplitData], dict[str, float]]
    test: SplitData
    screen: SplitData
    agree: Callable[[np.ndarray, np.ndarray], np.ndarray]
    metric: str = "accuracy"  # what the gate holds (trainflow/tasks/task.py GATE_METRIC)


def _evaluate(search: _Search, ref: _Reference, recipe: RecipeConfig) -> tuple[dict, dict | None]:
    """Build, screen, evaluate and gate one recipe (no timing): (row, full-test metrics)."""
    t0, q = time.perf_counter(), search.q
    row: dict[str, Any] = {"name": recipe.name, "passed": False, "mode": recipe.mode,
                           "graph": recipe.graph_level(q.graph_optimization)}  # fmt: skip
    try:
        fault_raise("int8-search")
        out = search.build(recipe)
        model = search.model(out)
        screen = ref.evaluate(model, ref.screen)[ref.metric]
        row.update(screen_accuracy=screen, size_bytes=out.stat().st_size)
        if ref.screen_accuracy - screen > q.max_accuracy_drop + q.screen_margin:
            log.info("INT8 recipe %s: screened out (%s %.4f vs FP32 %.4f on %d texts)", recipe.name, ref.metric, screen,
                     ref.screen_accuracy, len(ref.screen))  # fmt: skip
            return {**row, "status": "screened-out", "seconds": time.perf_counter() - t0}, None
        metrics = ref.evaluate(model, ref.test)
        invariance = batch_invariance(model, ref.test.inputs, q.batch_check_size, ref.agree)
    except (OSError, MemoryError):
        raise  # the machine, not the recipe: a full disk or no memory fails every recipe alike
    except Exception as err:  # a broken recipe must not hide the others: logged, listed in the table
        log.warning("INT8 recipe %s failed", recipe.name, exc_info=True)
        return {**row, "status": "error", "error": f"{type(err).__name__}: {err}"}, None
    drop = ref.metrics[ref.metric] - metrics[ref.metric]
    counts = count_nodes(out)
    detail = search.details[recipe.name]
    invariant = q.max_batch_diff is None or (
        invariance["max_abs_diff"] <= q.max_batch_diff and invariance["label_agreement"] == 1.0
    )
    row.update(accuracy=metrics[ref.metric], accuracy_drop=drop, passed=drop <= q.max_accuracy_drop + 1e-12 and invariant,
               quantized_nodes=detail.get("quantized_nodes"), fp32_weight_nodes=detail.get("excluded_nodes", []),
               node_counts={k: v for k, v in counts.items() if k in NODE_KINDS}, detail=detail,
               batch_max_diff=invariance["max_abs_diff"], batch_label_agreement=invariance["label_agreement"],
               seconds=time.perf_counter() - t0)  # fmt: skip
    row["status"] = "passed" if row["passed"] else "failed" if invariant else "batch-dependent"
    log.info("INT8 recipe %s: %s %.4f (drop %.4f), alone vs batched max |logit diff| %.3g (labels agree on"
             " %.1f %%), %s", recipe.name, ref.metric, metrics[ref.metric], drop, invariance["max_abs_diff"],
             100 * invariance["label_agreement"], row["status"])  # fmt: skip
    return row, metrics


def _time(search: _Search, ref: _Reference, row: dict[str, Any], latency_texts: Inputs) -> None:
    """Time a passing recipe against FP32 at batch 1, turn about (always in this process, alone)."""
    t0 = time.perf_counter()
    model = search.model(search.work / f"{row['name']}.onnx")
    latency = interleaved_latency_ms(
        {FP32_KEY: ref.model, row["name"]: model}, latency_texts, rounds=search.q.latency_rounds
    )
    log.info("INT8 recipe %s: p50 %.2f ms against FP32 %.2f ms at batch 1 (timed in %.1f s)", row["name"],
             latency[row["name"]]["p50_ms"], latency[FP32_KEY]["p50_ms"], time.perf_counter() - t0)  # fmt: skip
    row.update(p50_ms=latency[row["name"]]["p50_ms"], p95_ms=latency[row["name"]]["p95_ms"],
               fp32_p50_ms=latency[FP32_KEY]["p50_ms"], latency=latency)  # fmt: skip


_FORKED: tuple[_Search, _Reference, list[RecipeConfig]] | None = None  # what forked evaluators inherit


def _evaluate_forked(index: int) -> tuple[dict, dict | None]:
    assert _FORKED is not None
    search, ref, recipes = _FORKED
    return _evaluate(search, ref, recipes[index])


def _evaluations(search: _Search, ref: _Reference, recipes: list[RecipeConfig]):
    """(index, row, metrics) of each recipe, in order; with `quantize.parallel` > 1, that many
    recipes are built and evaluated at once in forked processes (each with its share of the cores)
    and their results are used in order, so the choice is the serial one's. When a recipe passes
    the gate the pool is stopped before the caller times it (its timing runs alone); if the caller
    asks for more (the recipe was not faster than FP32), a new pool goes on after it."""
    global _FORKED
    width = max(1, min(search.q.parallel, len(recipes)))
    if width == 1:
        for i, recipe in enumerate(recipes):
            yield i, *_evaluate(search, ref, recipe)
        return
    import multiprocessing as mp

    for recipe in recipes:  # each level's graph once, here, for every forked evaluator
        search.graph(recipe)
    share = max(1, search.settings.intra_op_num_threads // width)
    forked = replace(search, settings=replace(search.settings, intra_op_num_threads=share), shared_cache=False)
    _FORKED = (forked, ref, recipes)
    try:
        start = 0
        while start < len(recipes):
            # A pool left by a passing recipe was killed mid-work: its unfinished recipes start
            # afresh (their calibration caches, one per recipe here, may be half written).
            for recipe in recipes[start:]:
                forked.calibration_cache(recipe, forked.graph(recipe)[0]).unlink(missing_ok=True)
            passing = None
            with mp.get_context("fork").Pool(width) as pool:
                todo = range(start, len(recipes))
                for i, (row, metrics) in zip(todo, pool.imap(_evaluate_forked, todo)):
                    search.details[recipes[i].name] = row.get("detail", {})
                    start = i + 1
                    if row["passed"]:
                        passing = (i, row, metrics)
                        break  # leaving the block stops the pool: the caller times this recipe alone
                    yield i, row, metrics
            if passing is None:
                return
            yield passing
    finally:
        _FORKED = None


NODE_KINDS = ("QuantizeLinear", "DequantizeLinear", "MatMul", "MatMulInteger", "QAttention", "Attention",
              "QEmbedLayerNormalization", "DynamicQuantizeLinear")  # fmt: skip


def _search(search: _Search, ref: _Reference, recipes: list[RecipeConfig], latency_texts: Inputs):
    """Run the recipes in order until one passes and is faster than FP32; (rows, metrics, chosen
    name or None, whether it is faster)."""
    rows: list[dict[str, Any]] = []
    metrics: dict[str, dict | None] = {}
    t0 = time.perf_counter()
    for i, row, found in _evaluations(search, ref, recipes):
        recipe = recipes[i]
        log.info("INT8 search: recipe %d of %d (%s) done, %.0f s so far", i + 1, len(recipes), recipe.name,
                 time.perf_counter() - t0)  # fmt: skip
        metrics[recipe.name] = found
        row.pop("detail", None)
        rows.append(row)
        if not row["passed"]:
            continue
        _time(search, ref, row, latency_texts)
        if row["p50_ms"] < row["fp32_p50_ms"]:
            row["status"] = "chosen"
            return rows, metrics, recipe.name, True
        log.info("INT8 recipe %s passes the gate but is not faster than FP32 (%.2f vs %.2f ms)", recipe.name,
                 row["p50_ms"], row["fp32_p50_ms"])  # fmt: skip
    passing = [r for r in rows if r["passed"]]
    best = min(passing, key=lambda r: r["p50_ms"])["name"] if passing else None
    return rows, metrics, best, False


def _finish_rows(rows: list[dict[str, Any]], recipes: list[RecipeConfig]) -> list[RecipeOutcome]:
    done = {r["name"]: {k: v for k, v in r.items() if k != "latency"} for r in rows}
    return [RecipeOutcome(**done.get(r.name, {"name": r.name, "passed": False, "mode": r.mode})) for r in recipes]


def _sweep(fp32: Path, int8: Path, search: _Search, texts: Inputs, q: QuantizeConfig, primary: str) -> dict:
    """Latencies of both models at each thread count and batch size, and the best settings."""
    cores, t0 = physical_cores(), time.perf_counter()
    threads = q.threads or sorted({*(2**k for k in range(8) if 2**k <= cores), cores})
    table = thread_sweep({"fp32": fp32, "int8": int8}, search.tokenizer, search.max_length, texts, threads=threads,
                         batch_sizes=SWEEP_BATCHES, rounds=q.latency_rounds)  # fmt: skip
    best = {}
    for batch in SWEEP_BATCHES:
        mine = [r for r in table if r["model"] == primary and r["batch"] == batch]
        top = min(mine, key=lambda r: float(r["p50_ms"]))  # type: ignore[arg-type]
        best[f"batch{batch}"] = {"threads": top["threads"], "p50_ms": top["p50_ms"]}
    log.info("INT8: thread sweep %s at batch %s in %.1f s; best %s", threads, list(SWEEP_BATCHES),
             time.perf_counter() - t0, best)  # fmt: skip
    return {"primary": primary, "threads": threads, "table": table, "best": best, "cpu": cpu_info()}


def _result(
    search: _Search, ref: _Reference, recipes: list[RecipeConfig], rows: list[dict[str, Any]],
    metrics: dict[str, dict | None], table: list[RecipeOutcome], chosen: str, faster: bool, latency_texts: Inputs,
) -> QuantizeResult:  # fmt: skip
    """Copy the chosen model to model_int8.onnx, measure the serving settings, assemble the result."""
    q, fp32_path, work, settings = search.q, search.fp32_path, search.work, search.settings
    primary = "int8" if faster else "fp32"
    if not faster:
        log.warning("no INT8 recipe that passes the gate is faster than FP32 here: the package ships FP32 as its"
                    " primary model and %s beside it", chosen)  # fmt: skip
    int8_path = fp32_path.with_name(INT8_FILE)
    ensure_free_space(int8_path, (work / f"{chosen}.onnx").stat().st_size, "the chosen INT8 model")
    shutil.copyfile(work / f"{chosen}.onnx", int8_path)
    for path in work.glob("*.onnx"):
        path.unlink()  # the chosen one is copied; the table keeps the rest's figures
    row = next(r for r in rows if r["name"] == chosen)
    serving = _sweep(fp32_path, int8_path, search, latency_texts, q, primary)
    best = next(o for o in table if o.name == chosen)
    level = recipes[[r.name for r in recipes].index(chosen)].graph_level(q.graph_optimization)
    log.info("INT8: chose %s (%s) of %d recipes; primary model %s", chosen, best.status, len(table), primary)
    return QuantizeResult(
        int8_path=str(int8_path),
        fp32_metrics=ref.metrics,
        int8_metrics=metrics[chosen] or {},
        accuracy_drop=best.accuracy_drop or 0.0,
        fp32_latency=row["latency"][FP32_KEY],
        int8_latency=row["latency"][chosen],
        fp32_size_bytes=fp32_path.stat().st_size,
        int8_size_bytes=int8_path.stat().st_size,
        node_counts=best.node_counts,
        recipe=search.details[chosen],
        chosen=chosen,
        search=[o.model_dump() for o in table],
        session_options=settings.to_dict(),
        graph_optimization={
            **search.graphs[level][1],
            "chosen_graph": level,
            "graphs": {k: v for k, (_, v) in search.graphs.items()},
        },  # fmt: skip
        primary=primary,
        serving=serving,
        batch_invariance={
            "max_abs_diff": best.batch_max_diff,
            "label_agreement": best.batch_label_agreement,
            "n": len(ref.test.texts),
            "batch_size": q.batch_check_size,
            "required_max_abs_diff": q.max_batch_diff,
        },
        gate_metric=ref.metric,
    )


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
    head: TaskHead | None = None,
) -> QuantizeResult:
    """Search the recipes of `q` (module docstring); write the chosen model to `model_int8.onnx`
    beside `fp32_path`; report every recipe tried and the serving settings measured. `head` says
    what the outputs mean (multilabel thresholds, regression scale); by default a classification or
    ordinal head of `n_classes` and `cutpoints`. The gate holds the task's gate metric (accuracy;
    multilabel micro_f1; regression pearson) within `q.max_accuracy_drop` of FP32.

    Raises:
        QuantizationAccuracyError: no recipe keeps test accuracy within `q.max_accuracy_drop` of
            FP32 ONNX. The message lists every recipe tried; the candidate models are left in
            `int8-search/` beside the FP32 model for inspection; nothing is published.
        DiskSpaceError: too little disk for the search (checked before writing).
    """
    work = fp32_path.parent / SEARCH_DIR
    shutil.rmtree(work, ignore_errors=True)  # never reuse a stale calibration cache
    fp32_path.with_name(INT8_FILE).unlink(missing_ok=True)  # nor a previous attempt's INT8 model
    work.mkdir(parents=True)
    # Each prepared graph and each candidate is at most the FP32 file's size: check before writing.
    ensure_free_space(work, 4 * fp32_path.stat().st_size, "the INT8 recipe search")
    n_latency = latency_samples or q.latency_samples
    settings = SessionSettings(intra_op_num_threads=q.intra_op_threads or physical_cores()).resolved()
    latency_texts = test.inputs[:n_latency]
    search = _Search(fp32_path, work, tokenizer, max_length, settings, calibration, latency_texts, q)
    the_head = task_head(task, n_classes, cutpoints, head)

    def evaluate(model: OnnxTextModel, split: SplitData) -> dict[str, float]:
        return evaluate_onnx(model, task, split, n_classes, cutpoints, the_head)

    t0 = time.perf_counter()
    fp32 = search.model(fp32_path)
    screen = test.head(q.screen_samples)
    metric = the_head.gate_metric
    ref = _Reference(fp32, evaluate(fp32, test), evaluate(fp32, screen)[metric], evaluate, test, screen,
                     the_head.agree, metric)  # fmt: skip
    log.info("INT8 search: FP32 reference on %d test texts in %.1f s (%d threads)", len(test.texts),
             time.perf_counter() - t0, settings.intra_op_num_threads)  # fmt: skip
    recipes = list(q.recipes) if q.search else list(q.recipes[:1])
    rows, metrics, chosen, faster = _search(search, ref, recipes, latency_texts)
    table = _finish_rows(rows, recipes)
    (work / "search.json").write_text(json.dumps([o.model_dump() for o in table], indent=1))
    if chosen is None:
        tried = [o for o in table if o.status != "not-tried"]
        lines = "\n".join(f"  - {o.line()}" for o in tried)
        if all(o.status == "error" for o in tried):
            raise QuantizationError(
                f"no INT8 model could be built: every recipe failed ({len(tried)}), each with its cause:\n{lines}"
            )
        raise QuantizationAccuracyError(
            f"no INT8 recipe keeps test {metric} within {q.max_accuracy_drop * 100:.2f} points of FP32 ONNX "
            f"({ref.metrics[metric]:.4f}). Recipes tried ({sum(o.status != 'not-tried' for o in table)}):\n"
            f"{lines}\nCandidates left in {work}."
        )
    return _result(search, ref, recipes, rows, metrics, table, chosen, faster, latency_texts)
