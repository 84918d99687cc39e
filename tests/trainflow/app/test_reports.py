"""Card contents from plain data: Vega-Lite specs, tables, importances and their fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from trainflow.app import reports
from trainflow.convert.parity import ParityResult, decade_histogram
from trainflow.convert.quantize import QuantizeResult
from trainflow.core.config import HpoConfig
from trainflow.release.publish import PackageResult
from trainflow.search.study import CURVES_ATTR, open_study, trial_records


def _study(tmp_path: Path, values: list[float | None], tiny_cfg_model) -> tuple[str, str]:
    """A journal study with one trial per value (None: pruned), each with a recorded curve."""
    storage, name = str(tmp_path / "optuna.journal"), "s"
    study = open_study(tiny_cfg_model, storage, name)
    for i, v in enumerate(values):
        trial = study.ask()
        trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True)
        trial.suggest_float("weight_decay", 0.0, 0.1)
        trial.set_user_attr("worker", i % 2)
        points = [{"step": s, "train/loss": 1.0 / s} for s in range(1, 7)]
        points[2].update({"val/loss": 0.5, "val/accuracy": 0.6})
        points[5].update({"val/loss": 0.4, "val/accuracy": 0.7})
        trial.set_user_attr(CURVES_ATTR, points)
        if v is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, v)
    return storage, name


@pytest.fixture
def cfg(tiny_cfg):
    from trainflow.core.config import parse_config_dict

    return parse_config_dict(tiny_cfg)


def test_history_has_every_complete_trial_and_a_monotone_best_so_far(tmp_path, cfg) -> None:
    storage, name = _study(tmp_path, [0.6, 0.55, None, 0.7, 0.65], cfg)
    records = trial_records(reports.load_study(storage, name))
    spec = reports.history_spec(records, "accuracy", "maximize")
    rows = spec["data"]["values"]
    assert [r["trial"] for r in rows] == [0, 1, 3, 4]  # the pruned trial has no value
    assert [r["best so far"] for r in rows] == [0.6, 0.6, 0.7, 0.7]
    assert {layer["mark"]["type"] for layer in spec["layer"]} == {"line", "point"}
    assert spec["layer"][0]["encoding"]["x"]["axis"]["values"] == [0, 1, 2, 3, 4]  # whole trial numbers
    low = reports.history_spec(records, "accuracy", "minimize")["data"]["values"]
    assert [r["best so far"] for r in low] == [0.6, 0.55, 0.55, 0.55]


def test_hpo_report_blocks_and_table(tmp_path, cfg) -> None:
    storage, name = _study(tmp_path, [0.6, None, 0.7], cfg)
    study = reports.load_study(storage, name)
    records = trial_records(study)
    best = next(r for r in records if r.number == 2)
    blocks = reports.hpo_report(storage=storage, study_name=name, records=records, best=best, hpo=HpoConfig(n_trials=3))
    kinds = [type(b).__name__ for b in blocks]
    assert kinds == ["Markdown", "Progress", "Chart", "Markdown", "Chart", "Chart", "Markdown", "Table"]
    assert blocks[1] == reports.Progress("trials finished", 3, 3)
    assert "not computed: 2 complete trial(s)" in blocks[3].text  # too few for importances
    assert [b.spec["title"] for b in blocks if isinstance(b, reports.Chart)][1:] == [
        "accuracy by learning_rate",
        "accuracy by weight_decay",
    ]
    table = blocks[-1]
    assert table.headers[:4] == ["trial", "state", "worker", "value"]
    assert [row[0] for row in table.rows] == ["0", "1", "2 (best)"]
    assert [row[1] for row in table.rows] == ["COMPLETE", "PRUNED", "COMPLETE"]


def test_the_join_card_plots_metric_against_latency_and_says_why_the_search_stopped(tmp_path, cfg) -> None:
    from trainflow.search.study import STOPPED_ATTR

    storage, name = str(tmp_path / "optuna.journal"), "s"
    study = open_study(cfg, storage, name)
    for value, latency, size, feasible in [(0.9, 9.0, 5.0, False), (0.8, 2.0, 1.0, True), (0.7, 1.0, 1.0, True),
                                           (0.6, 3.0, 1.0, True), (0.75, 2.5, 1.0, True)]:  # fmt: skip
        study.add_trial(optuna.trial.create_trial(params={"model.base": "deep" if latency > 5 else "small"},
                                                  distributions={"model.base": optuna.distributions.CategoricalDistribution(["small", "deep"])},
                                                  value=value, user_attrs={"latency_ms": latency, "size_mb": size,
                                                                           "feasible": feasible}))  # fmt: skip
    study.set_user_attr(STOPPED_ATTR, "trial 1 reached the target accuracy 0.8 (hpo.budget.target)")
    records = trial_records(study)
    hpo = HpoConfig(n_trials=8, constraints={"max_latency_ms": 5.0})
    blocks = reports.hpo_report(storage=storage, study_name=name, records=records, best=records[1], hpo=hpo)
    assert "stopped before 8 trials: trial 1 reached the target accuracy 0.8" in blocks[1].text
    (pareto,) = [
        b.spec for b in blocks if isinstance(b, reports.Chart) and "against INT8 latency" in str(b.spec["title"])
    ]
    rows = {r["trial"]: r["pareto"] for r in pareto["data"]["values"]}
    assert rows == {0: True, 1: True, 2: True, 3: False, 4: False}
    assert pareto["layer"][-1]["data"]["values"] == [{"limit": 5.0}]
    table = blocks[-1]
    assert table.headers[-3:] == ["INT8 ms", "INT8 MB", "within limits"] and table.rows[0][-1] == "no"
    # A categorical parameter (a base model) gets a nominal axis in the slice plots.
    (spec,) = reports.slice_specs(records, "accuracy")
    assert spec["encoding"]["x"]["type"] == "nominal"


def test_importances_with_enough_trials(tmp_path, cfg) -> None:
    study = reports.load_study(*_study(tmp_path, [0.5, 0.6, 0.55, 0.7, 0.65, 0.62], cfg))
    imp, method = reports.param_importances(study)
    assert method.startswith("PedAnovaImportanceEvaluator")
    assert set(imp) == {"learning_rate", "weight_decay"}
    assert sum(imp.values()) == pytest.approx(1.0)


def test_importances_fall_back_to_slice_plots_when_they_cannot_be_computed(tmp_path, cfg) -> None:
    # Equal values: PED-ANOVA would return equal importances (with a warning); we say so instead.
    storage, name = _study(tmp_path, [0.5] * 5, cfg)
    imp, method = reports.param_importances(reports.load_study(storage, name))
    assert imp is None and method == "not computed: all 5 complete trials have the same value"
    records = trial_records(reports.load_study(storage, name))
    best = records[0]
    blocks = reports.hpo_report(storage=storage, study_name=name, records=records, best=best, hpo=HpoConfig(n_trials=5))
    charts = [b.spec for b in blocks if isinstance(b, reports.Chart)]
    assert [c["title"] for c in charts[1:]] == ["accuracy by learning_rate", "accuracy by weight_decay"]
    assert charts[1]["encoding"]["x"]["scale"]["type"] == "log"
    assert len(charts[1]["data"]["values"]) == 5


def test_training_report_charts_loss_and_validation(tmp_path, cfg) -> None:
    storage, name = _study(tmp_path, [0.6, None], cfg)
    records = trial_records(reports.load_study(storage, name))
    blocks = reports.training_report(storage=storage, study_name=name, trials=records, metric="accuracy")
    charts = [b.spec for b in blocks if isinstance(b, reports.Chart)]
    assert len(charts) == 4  # loss + validation per trial, pruned trials included
    loss = charts[0]["data"]["values"]
    assert [p["step"] for p in loss if p["series"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [p["step"] for p in loss if p["series"] == "validation"] == [3, 6]
    assert charts[1]["data"]["values"] == [{"step": 3, "accuracy": 0.6}, {"step": 6, "accuracy": 0.7}]


def test_decade_histogram_counts_every_element() -> None:
    d = np.array([0.0, 2e-8, 5e-8, 3e-7, 9e-7, 1e-6])
    hist = decade_histogram(d)
    assert sum(c for _, c in hist) == d.size
    assert dict(hist)[-8] == 2 and dict(hist)[-7] == 2 and dict(hist)[-6] == 1 and dict(hist)[-12] == 1
    assert [k for k, _ in hist] == [-12, -8, -7, -6]  # the non-empty decades, in order


def _quant(search: list[dict]) -> QuantizeResult:
    return QuantizeResult(
        int8_path="x", fp32_metrics={"accuracy": 0.8}, int8_metrics={"accuracy": 0.79}, accuracy_drop=0.01,
        fp32_latency={"p50_ms": 4.0}, int8_latency={"p50_ms": 2.0}, fp32_size_bytes=90_000_000,
        int8_size_bytes=23_000_000, chosen="minmax", search=search,
    )  # fmt: skip


def test_quantize_report_table_and_parity_histogram() -> None:
    search = [
        {"name": "minmax", "passed": True, "status": "chosen", "mode": "dynamic", "screen_accuracy": 0.8,
         "accuracy": 0.79, "accuracy_drop": 0.01, "p50_ms": 2.0, "p95_ms": 2.5, "fp32_p50_ms": 5.0,
         "size_bytes": 23_000_000, "error": None},
        {"name": "entropy", "passed": False, "status": "failed", "accuracy": 0.7, "accuracy_drop": 0.1,
         "size_bytes": 23_000_000, "error": None},
        {"name": "broken", "passed": False, "status": "error", "error": "boom"},
    ]  # fmt: skip
    parity = ParityResult(32, 2e-6, 3e-7, 1.0, 1e-4, error_histogram=[(-8, 10), (-7, 40), (-6, 14)])
    blocks = reports.quantize_report(parity=parity, quant=_quant(search))
    table = next(b for b in blocks if isinstance(b, reports.Table))
    assert table.headers == ["recipe", "status", "mode", "screening acc", "accuracy", "drop (points)", "p50 ms",
                             "FP32 p50 ms", "size MB"]  # fmt: skip
    assert table.rows[0] == ["minmax (chosen)", "chosen", "dynamic", "0.8", "0.79", "+1.00", "2.00", "5.00", "23.00"]
    assert table.rows[1][1] == "failed" and table.rows[2][1:3] == ["error", "static"]
    spec = next(b for b in blocks if isinstance(b, reports.Chart)).spec
    bars, rule = spec["layer"]
    assert [v["count"] for v in bars["data"]["values"]] == [10, 40, 14]
    assert rule["data"]["values"] == [{"k": pytest.approx(-4.0)}]


def test_package_report_lists_files_and_metrics(tmp_path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x" * 2000)
    package = PackageResult(path=str(tmp_path), version="v1", files={"model.onnx": "ab" * 32})
    summary = {"version": "v1", "best_trial": 1, "hyperparameters": {"learning_rate": 1e-4},
               "validation": {"accuracy": 0.8}, "test_fp32_onnx": {"accuracy": 0.75},
               "parity_max_abs_diff": 1e-6, "int8_accuracy_drop": 0.01}  # fmt: skip
    blocks = reports.package_report(package=package, summary=summary)
    files = blocks[-1]
    assert files.rows == [["model.onnx", "0.002", "ab" * 8]]
    metrics = blocks[2]
    assert ["validation", "accuracy", "0.8"] in metrics.rows and ["test_fp32_onnx", "accuracy", "0.75"] in metrics.rows
