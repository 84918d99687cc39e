"""What the flow's cards show, built from plain data (no Metaflow here).

Each `*_report` function returns a list of blocks (trainflow/app/blocks.py: `Markdown`, `Chart` with a
Vega-Lite spec, `Table`, `Progress`); the flow's card adapter (flows/trainflow_cards.py) turns each block into a
Metaflow card component. Everything here can be built and checked without a flow.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from trainflow.app.blocks import Block, Chart, Markdown, Progress, Table
from trainflow.core.config import HpoConfig
from trainflow.search.study import CURVES_ATTR, TrialRecord, open_storage, pareto_front, stopped_reason

if TYPE_CHECKING:  # the results the cards show: their modules (torch, onnx) are loaded by the steps
    from trainflow.convert.parity import ParityResult
    from trainflow.convert.quantize import QuantizeResult
    from trainflow.release.publish import PackageResult

__all__ = ["Block", "Chart", "Markdown", "Progress", "Table"]

VEGA_LITE = "https://vega.github.io/schema/vega-lite/v5.json"
VALUE_AXIS = {"format": ".4~g"}  # a flat series gets one tick: show it as 0.6415, not 1
# Importances from fewer complete trials say more about the sampler than about the parameters.
MIN_TRIALS_FOR_IMPORTANCE = 4


def integer_axis(values: Sequence[int]) -> dict[str, Any]:
    """Axis for trial numbers or steps: whole numbers only (Vega would tick 0, 0.5, 1 for two trials)."""
    lo, hi = (min(values), max(values)) if values else (0, 0)
    if hi - lo <= 20:
        return {"values": list(range(lo, hi + 1)), "format": "d"}
    return {"tickMinStep": 1, "format": "d"}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


# --- HPO --------------------------------------------------------------------------------------


def history_spec(records: Sequence[TrialRecord], metric: str, direction: str) -> dict[str, Any]:
    """Vega-Lite: each complete trial's value by trial number, and the best-so-far line."""
    better = max if direction == "maximize" else min
    rows: list[dict[str, Any]] = []
    best: float | None = None
    for r in sorted(records, key=lambda r: r.number):
        if r.state != "COMPLETE" or r.value is None:
            continue
        best = r.value if best is None else better(best, r.value)
        rows.append({"trial": r.number, "value": r.value, "best so far": best, "worker": str(r.worker)})
    x = {
        "field": "trial",
        "type": "quantitative",
        "title": "trial number",
        "axis": integer_axis([r["trial"] for r in rows]),
    }
    return {
        "$schema": VEGA_LITE,
        "title": f"Optuna history: validation {metric} ({direction})",
        "data": {"values": rows},
        "height": 240,
        "layer": [
            {
                "mark": {"type": "line", "interpolate": "step-after", "color": "#e45756"},
                "encoding": {
                    "x": x,
                    "y": {"field": "best so far", "type": "quantitative", "title": metric, "axis": VALUE_AXIS},
                },
            },
            {
                "mark": {"type": "point", "filled": True, "size": 80},
                "encoding": {
                    "x": x,
                    "y": {"field": "value", "type": "quantitative", "scale": {"zero": False}, "axis": VALUE_AXIS},
                    "color": {"field": "worker", "type": "nominal"},
                    "tooltip": [{"field": "trial"}, {"field": "value"}, {"field": "worker"}],
                },
            },
        ],
    }


def param_importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """(importance per parameter, how it was computed), or (None, why not).

    Uses Optuna's default evaluator (PED-ANOVA in Optuna 5) once MIN_TRIALS_FOR_IMPORTANCE trials
    completed. It cannot say anything when every complete trial has the same value (it then
    returns equal importances with a warning, which we do not pass off as a result) or when it
    raises; the caller then shows the slice plot instead."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None, f"not computed: {len(complete)} complete trial(s), need {MIN_TRIALS_FOR_IMPORTANCE}"
    if len({t.value for t in complete}) == 1:
        return None, f"not computed: all {len(complete)} complete trials have the same value"
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (RuntimeError, ValueError) as err:
            return None, f"not computed: {type(evaluator).__name__} failed ({err})"
    equal = [w for w in caught if "importances will be equal" in str(w.message)]
    if equal or not imp or not all(np.isfinite(v) for v in imp.values()):
        why = str(equal[0].message) if equal else "no finite importances"
        return None, f"not computed: {type(evaluator).__name__}: {why}"
    return {k: float(v) for k, v in imp.items()}, f"{type(evaluator).__name__} (optuna.importance)"


def slice_specs(records: Sequence[TrialRecord], metric: str) -> list[dict[str, Any]]:
    """Vega-Lite scatter per parameter: each complete trial's value against the parameter (the
    importances' fallback: always drawable, and readable with a handful of trials)."""
    done = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    specs = []
    for name in sorted({k for r in done for k in r.params}):
        values = [{"trial": r.number, name: r.params[name], metric: r.value} for r in done if name in r.params]
        numeric = all(isinstance(v[name], int | float) and not isinstance(v[name], bool) for v in values)
        positive = numeric and all(v[name] > 0 for v in values)
        x = ({"field": name, "type": "quantitative", "scale": {"type": "log" if positive else "linear"}} if numeric
             else {"field": name, "type": "nominal"})  # fmt: skip
        specs.append(
            {
                "$schema": VEGA_LITE,
                "title": f"{metric} by {name}",
                "data": {"values": values},
                "height": 160,
                "mark": {"type": "point", "filled": True, "size": 80},
                "encoding": {
                    "x": x,
                    "y": {"field": metric, "type": "quantitative", "scale": {"zero": False}, "axis": VALUE_AXIS},
                    "tooltip": [{"field": "trial"}, {"field": name}, {"field": metric}],
                },
            }
        )
    return specs


def importance_spec(importances: dict[str, float], method: str) -> dict[str, Any]:
    return {
        "$schema": VEGA_LITE,
        "title": {"text": "Parameter importances", "subtitle": method},
        "data": {"values": [{"parameter": k, "importance": v} for k, v in importances.items()]},
        "mark": "bar",
        "encoding": {
            "y": {"field": "parameter", "type": "nominal", "sort": "-x", "title": None},
            "x": {"field": "importance", "type": "quantitative"},
            "tooltip": [{"field": "parameter"}, {"field": "importance", "format": ".3f"}],
        },
    }


def pareto_spec(records: Sequence[TrialRecord], metric: str, direction: str, hpo: HpoConfig) -> dict[str, Any]:
    """Vega-Lite: each complete trial's validation metric against its INT8 latency, the Pareto
    front (no trial better on both) as a line, and the latency limit as a rule."""
    front = {r.number for r in pareto_front(list(records), direction)}
    rows = [{"trial": r.number, "latency_ms": r.latency_ms, "value": r.value, "size_mb": r.size_mb,
             "pareto": r.number in front} for r in records
            if r.state == "COMPLETE" and r.value is not None and r.latency_ms is not None]  # fmt: skip
    x = {"field": "latency_ms", "type": "quantitative", "title": "INT8 p50 latency (ms)", "scale": {"zero": False}}
    y = {"field": "value", "type": "quantitative", "title": f"validation {metric}", "scale": {"zero": False},
         "axis": VALUE_AXIS}  # fmt: skip
    layers: list[dict[str, Any]] = [
        {"transform": [{"filter": "datum.pareto"}], "mark": {"type": "line", "color": "#e45756"},
         "encoding": {"x": x, "y": y, "order": {"field": "latency_ms"}}},
        {"mark": {"type": "point", "filled": True, "size": 80},
         "encoding": {"x": x, "y": y, "color": {"field": "pareto", "type": "nominal", "title": "Pareto front"},
                      "tooltip": [{"field": "trial"}, {"field": "value", "format": ".4f"},
                                  {"field": "latency_ms", "format": ".2f"}, {"field": "size_mb", "format": ".1f"}]}},
    ]  # fmt: skip
    limit = hpo.constraints.max_latency_ms if hpo.constraints else None
    if limit is not None:
        layers.append({"data": {"values": [{"limit": limit}]}, "mark": {"type": "rule", "strokeDash": [4, 4]},
                       "encoding": {"x": {"field": "limit", "type": "quantitative"}}})  # fmt: skip
    return {"$schema": VEGA_LITE, "title": f"Validation {metric} against INT8 latency ({direction})",
            "data": {"values": rows}, "height": 240, "layer": layers}  # fmt: skip


def trials_table(records: Sequence[TrialRecord], best: int | None) -> Table:
    params = sorted({k for r in records for k in r.params})
    costs = any(r.latency_ms is not None for r in records)
    rows = [
        [
            f"{r.number}{' (best)' if r.number == best else ''}",
            r.state,
            _fmt(r.worker),
            _fmt(r.value),
            *(_fmt(r.params.get(p)) for p in params),
            _fmt(r.steps),
            _fmt(None if r.duration_s is None else round(r.duration_s, 1)),
            *((_fmt(r.latency_ms), _fmt(r.size_mb), _fmt(r.feasible)) if costs else ()),
        ]
        for r in sorted(records, key=lambda r: r.number)
    ]
    extra = ["INT8 ms", "INT8 MB", "within limits"] if costs else []
    return Table(["trial", "state", "worker", "value", *params, "steps", "seconds", *extra], rows)


def hpo_report(
    *, storage: str, study_name: str, records: Sequence[TrialRecord], best: TrialRecord, hpo: HpoConfig
) -> list[Block]:
    """Summary, trials-finished bar, Optuna history, parameter importances and the trials table."""
    metric, direction = hpo.metric, hpo.direction
    finished = sum(r.state in ("COMPLETE", "PRUNED") for r in records)
    states = {s: sum(r.state == s for r in records) for s in sorted({r.state for r in records})}
    blocks: list[Block] = [
        Markdown(
            f"## Hyperparameter search\n\nBest trial **{best.number}**: validation {metric} **{_fmt(best.value)}**"
            f" ({direction}); trials: {', '.join(f'{n} {s.lower()}' for s, n in states.items())}."
        ),
        Progress("trials finished", finished, hpo.n_trials),
        Chart(history_spec(records, metric, direction)),
    ]
    study = load_study(storage, study_name)
    if (reason := stopped_reason(study)) is not None:
        blocks.insert(1, Markdown(f"The search stopped before {hpo.n_trials} trials: {reason}."))
    if any(r.latency_ms is not None for r in records):
        blocks.append(Chart(pareto_spec(records, metric, direction, hpo)))
    importances, method = param_importances(study)
    if importances is None:
        blocks.append(Markdown(f"**Parameter importances** {method}; value by parameter instead:"))
        blocks += [Chart(spec) for spec in slice_specs(records, metric)]
    else:
        blocks.append(Chart(importance_spec(importances, method)))
    blocks += [Markdown("### Trials"), trials_table(records, best.number)]
    return blocks


def load_study(storage: str, study_name: str) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=open_storage(storage))


# --- training curves ------------------------------------------------------------------------


def curves_specs(trial: int, points: Sequence[dict[str, float]], metric: str) -> list[dict[str, Any]]:
    """Vega-Lite: per-step training loss (with validation loss at each eval), and the validation
    `metric` at each eval, from the points a TrialLogger recorded."""
    loss = [{"step": p["step"], "loss": p["train/loss"], "series": "train"} for p in points if "train/loss" in p]
    loss += [{"step": p["step"], "loss": p["val/loss"], "series": "validation"} for p in points if "val/loss" in p]
    val = [{"step": p["step"], metric: p[f"val/{metric}"]} for p in points if f"val/{metric}" in p]
    steps = [int(p["step"]) for p in points]
    step = {"field": "step", "type": "quantitative", "title": "step", "axis": integer_axis(steps)}
    return [
        {
            "$schema": VEGA_LITE,
            "title": f"Trial {trial}: loss",
            "data": {"values": loss},
            "height": 200,
            "mark": {"type": "line", "point": {"size": 20}},
            "encoding": {
                "x": step,
                "y": {"field": "loss", "type": "quantitative", "scale": {"zero": False}},
                "color": {"field": "series", "type": "nominal"},
                "tooltip": [{"field": "step"}, {"field": "series"}, {"field": "loss", "format": ".4f"}],
            },
        },
        {
            "$schema": VEGA_LITE,
            "title": f"Trial {trial}: validation {metric}",
            "data": {"values": val},
            "height": 160,
            "mark": {"type": "line", "point": True},
            "encoding": {
                "x": step,
                "y": {"field": metric, "type": "quantitative", "scale": {"zero": False}, "axis": VALUE_AXIS},
                "tooltip": [{"field": "step"}, {"field": metric, "format": ".4f"}],
            },
        },
    ]


def trial_curves(study: optuna.Study, numbers: Sequence[int]) -> dict[int, list[dict[str, float]]]:
    """The recorded curve of each trial in `numbers` (empty when none was recorded)."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    return {n: list(by_number[n].user_attrs.get(CURVES_ATTR, [])) if n in by_number else [] for n in numbers}


def training_report(*, storage: str, study_name: str, trials: Sequence[TrialRecord], metric: str) -> list[Block]:
    """Loss and validation curves of the trials one foreach worker ran."""
    curves = trial_curves(load_study(storage, study_name), [t.number for t in trials])
    blocks: list[Block] = [Markdown(f"## Training: {len(trials)} trial(s) on this worker")]
    for t in trials:
        params = ", ".join(f"{k}={_fmt(v, 3)}" for k, v in sorted(t.params.items()))
        blocks.append(Markdown(f"### Trial {t.number}: {t.state}, validation {metric} {_fmt(t.value)}\n\n{params}"))
        if curves[t.number]:
            blocks += [Chart(spec) for spec in curves_specs(t.number, curves[t.number], metric)]
        else:
            blocks.append(Markdown("_No curve was recorded for this trial._"))
    return blocks


# --- quantization -----------------------------------------------------------------------------


def recipe_table(search: Sequence[dict[str, Any]], chosen: str, metric: str = "accuracy") -> Table:
    """One row per INT8 recipe of the search (QuantizeResult.search), in the order tried: its
    status (chosen, passed, failed, screened-out, error, not-tried) and what was measured (the
    gate's `metric`: accuracy, or the task's gate metric)."""
    rows = []
    for o in search:
        drop = o.get("accuracy_drop")
        size = o.get("size_bytes")
        status = "error" if o.get("error") else o.get("status") or ("PASS" if o.get("passed") else "FAIL")
        rows.append(
            [
                f"{o['name']}{' (chosen)' if o['name'] == chosen else ''}",
                status,
                o.get("mode", "static"),
                _fmt(o.get("screen_accuracy")),
                _fmt(o.get("accuracy")),
                "-" if drop is None else f"{drop * 100:+.2f}",
                "-" if o.get("p50_ms") is None else f"{o['p50_ms']:.2f}",
                "-" if o.get("fp32_p50_ms") is None else f"{o['fp32_p50_ms']:.2f}",
                "-" if size is None else f"{size / 1e6:.2f}",
            ]
        )
    short = "acc" if metric == "accuracy" else metric
    return Table(["recipe", "status", "mode", f"screening {short}", metric, "drop (points)", "p50 ms", "FP32 p50 ms",
                  "size MB"], rows)  # fmt: skip


def serving_table(serving: dict[str, Any]) -> Table:
    """The thread sweep: p50 of each model per thread count and batch size."""
    rows = [[str(r["model"]), str(r["threads"]), str(r["batch"]), f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}"]
            for r in serving.get("table", [])]  # fmt: skip
    return Table(["model", "threads", "batch", "p50 ms", "p95 ms"], rows)


def parity_histogram_spec(histogram: Sequence[tuple[int, int]], atol: float, n_samples: int) -> dict[str, Any]:
    """Vega-Lite bars: count of |PyTorch - ONNX| output elements per decade [10^k, 10^(k+1)) on a
    log10 axis, with a dashed rule at the gate's atol."""
    values = [{"k": k, "k1": k + 1, "count": c, "range": f"[1e{k}, 1e{k + 1})"} for k, c in histogram]
    x = {"field": "k", "type": "quantitative", "title": "log10 |PyTorch - ONNX|", "axis": {"tickMinStep": 1}}
    return {
        "$schema": VEGA_LITE,
        "title": {
            "text": "Parity: |PyTorch - ONNX| per output element",
            "subtitle": f"{n_samples} test samples; dashed: atol {atol:.0e}; exact zeros count in the 1e-12 bin",
        },
        "height": 200,
        "layer": [
            {
                "data": {"values": values},
                "mark": {"type": "bar", "binSpacing": 1},
                "encoding": {
                    "x": x,
                    "x2": {"field": "k1"},
                    "y": {"field": "count", "type": "quantitative", "title": "output elements"},
                    "y2": {"datum": 0},
                    "tooltip": [{"field": "range"}, {"field": "count"}],
                },
            },
            {
                "data": {"values": [{"k": float(np.log10(atol))}]},
                "mark": {"type": "rule", "strokeDash": [6, 4], "color": "#e45756", "size": 2},
                "encoding": {"x": {"field": "k", "type": "quantitative"}},
            },
        ],
    }


def quantize_report(*, parity: ParityResult, quant: QuantizeResult) -> list[Block]:
    """The INT8 recipe search table and the FP32 export's parity error histogram."""
    chosen = quant.chosen
    metric = quant.gate_metric
    fp32, int8 = quant.fp32_metrics.get(metric), quant.int8_metrics.get(metric)
    return [
        Markdown(
            f"## INT8 quantization\n\nChosen recipe **{chosen}**: test {metric} {_fmt(int8)} vs FP32 ONNX"
            f" {_fmt(fp32)} (drop {quant.accuracy_drop * 100:+.2f} points); batch-1 p50"
            f" {_fmt(quant.int8_latency.get('p50_ms'))} ms vs {_fmt(quant.fp32_latency.get('p50_ms'))} ms;"
            f" {quant.int8_size_bytes / 1e6:.2f} MB vs {quant.fp32_size_bytes / 1e6:.2f} MB."
        ),
        Markdown("### Recipe search"),
        recipe_table(quant.search, chosen, metric),
        Markdown(
            f"### Serving settings\n\nPrimary model **{quant.primary}**; best batch-1 threads"
            f" {quant.serving.get('best', {}).get('batch1', {}).get('threads', '-')}, batch-32 threads"
            f" {quant.serving.get('best', {}).get('batch32', {}).get('threads', '-')}"
            f" ({quant.serving.get('cpu', {}).get('model', 'unknown CPU')})."
        ),
        serving_table(quant.serving),
        Markdown(
            f"### Export parity\n\nmax |diff| {parity.max_abs_diff:.3g}, mean {parity.mean_abs_diff:.3g}"
            f" (atol {parity.atol:.0e}); predicted class agrees on {parity.prediction_agreement:.1%}"
            f" of {parity.n_samples} samples."
        ),
        Chart(parity_histogram_spec(parity.error_histogram, parity.atol, parity.n_samples)),
    ]


# --- package ------------------------------------------------------------------------------------


def package_report(*, package: PackageResult, summary: dict[str, Any]) -> list[Block]:
    """Version, path, headline metrics and the files (size, SHA-256) of a published package."""
    metric_rows = []
    for split in ("validation", "test_fp32_onnx", "test_int8_onnx", "test_majority_baseline"):
        for name, value in sorted(summary.get(split, {}).items()):
            metric_rows.append([split, name, _fmt(value)])
    metric_rows += [
        ["export", "parity_max_abs_diff", _fmt(summary.get("parity_max_abs_diff"))],
        ["int8", "accuracy_drop", _fmt(summary.get("int8_accuracy_drop"))],
    ]
    root, package_path = Path(package.path), package.path
    file_rows = [
        [name, f"{(root / name).stat().st_size / 1e6:.3f}" if (root / name).is_file() else "-", digest[:16]]
        for name, digest in sorted(package.files.items())
    ]
    hp = ", ".join(f"{k}={_fmt(v, 3)}" for k, v in summary.get("hyperparameters", {}).items())
    return [
        Markdown(
            f"## Package {summary.get('version')}\n\n`{package_path}`\n\nBest trial {summary.get('best_trial')}: {hp}"
        ),
        Markdown("### Metrics"),
        Table(["split", "metric", "value"], metric_rows),
        Markdown("### Files"),
        Table(["file", "MB", "sha256 (first 16)"], file_rows),
    ]
