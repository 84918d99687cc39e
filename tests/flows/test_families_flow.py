"""The whole flow for base models of other families than BERT, with the shipped defaults: a config
that extends config/dev.yaml (embeddings and the lowest layers frozen, the default INT8 recipe)
and names a local RoBERTa or GPT-2 folder, as a user brings one. The runs also carry the other
task types through the flow: RoBERTa (no token types) a regression over text pairs, GPT-2 a
multi-label task on the shipped word tags. (Every family, DistilBERT's classification included,
trains, exports, quantizes, publishes and loads in tests/trainflow/training/test_families.py; the
BERT classification flow runs in tests/flows.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.families import build_family
from tests.tiny import ROOT, rt_texts
from trainflow.package import LabelSetPrediction, ValuePrediction, load
from trainflow.records.store import query
from trainflow.release.metadata import read_metadata

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TAGS = ["positive", "negative", "strong", "weak", "active", "passive", "hostile", "virtue", "vice"]


def _pair_values(tmp_path: Path) -> Path:
    """The shipped (condition, review) pairs with a number per sentiment: a pair regression."""
    frame = pd.read_csv(ROOT / "data" / "drug_review_pairs.csv.gz").head(500)
    frame["score"] = frame["label"].map({"negative": 1.0, "neutral": 5.5, "positive": 9.0})
    path = tmp_path / "pairs.csv"
    frame[["id", "condition", "text", "score"]].to_csv(path, index=False)
    return path


def _task(family: str, tmp_path: Path) -> dict[str, Any]:
    """The config sections of the family's run: its task and data."""
    if family == "roberta":
        return {"task": {"type": "regression", "labels": ["score"]},
                "data": {"path": str(_pair_values(tmp_path)), "text_column": "condition", "text_pair_column": "text",
                         "label_column": "score"}}  # fmt: skip
    return {"task": {"type": "multilabel", "labels": TAGS},
            "data": {"path": str(ROOT / "data" / "word_tags.csv.gz"), "label_column": "labels", "max_rows": 600}}  # fmt: skip


@pytest.mark.parametrize("family", ["roberta", "gpt2"])
def test_the_flow_publishes_a_package_for_another_family(family: str, tmp_path: Path) -> None:
    base = build_family(family, tmp_path / family, rt_texts(400))
    config = tmp_path / "mine.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "extends": str(ROOT / "config" / "dev.yaml"),
        "name": f"mine-{family}",
        **_task(family, tmp_path),
        "model": {"base": str(base)},
        # A tiny random model learns little in 40 steps: the gate's tolerance is opened, not its checks.
        "quantize": {"max_accuracy_drop": 1.0},
        "publish": {"artifact_root": str(tmp_path / "artifacts"), "run_root": str(tmp_path / "runs")},
        "tracking": {"wandb_mode": "disabled"},
    }))  # fmt: skip
    env = {**os.environ, "METAFLOW_USER": "families", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    check = subprocess.run([sys.executable, "-m", "trainflow.app.cli", "check", "--config", str(config)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "frozen: embeddings, layers 1-2 of 2" in check.stdout
    done = subprocess.run([sys.executable, str(ROOT / "flows" / "train_flow.py"), "--config", "config", str(config),
                           "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (package,) = (tmp_path / "artifacts" / f"mine-{family}").iterdir()
    meta = read_metadata(package)
    assert meta.base_model.name == str(base) and meta.quantization.chosen_recipe == "u8s8"
    assert meta.quantization.batch_invariance["label_agreement"] == 1.0
    assert meta.quantization.graph_optimization["applied"] == "fused"
    model = load(package)
    columns, rows = query(tmp_path / "artifacts", "SELECT task, metric, test_accuracy, baseline_metric FROM packages")
    record = dict(zip(columns, rows[0], strict=True))
    if family == "roberta":  # pairs without token types: the separator tokens mark the second text
        assert check.stdout.startswith("config mine-roberta: regression") and "text pairs" in check.stdout
        assert (
            meta.text_pair and "token_type_ids" not in meta.onnx.inputs and meta.quantization.gate_metric == "pearson"
        )
        predictions = model.predict([("Pain", "It worked within an hour."), ("Acne", "My skin got worse.")])
        assert all(isinstance(p, ValuePrediction) for p in predictions)
        assert (record["task"], record["metric"], record["test_accuracy"]) == ("regression", "mse", None)
        assert record["baseline_metric"] == pytest.approx(meta.metrics.test_majority_baseline["mse"])
    else:
        assert (
            "(no label)" in check.stdout and meta.hpo.metric == "macro_f1" and len(meta.thresholds or []) == len(TAGS)
        )
        predictions = model.predict(["abandon", "brave", "table"])
        assert all(isinstance(p, LabelSetPrediction) and set(p.probabilities) == set(TAGS) for p in predictions)
        assert (record["task"], record["metric"]) == ("multilabel", "macro_f1")
        board = subprocess.run([sys.executable, "-m", "trainflow.app.cli", "leaderboard", "--artifact-root",
                                str(tmp_path / "artifacts")], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert board.returncode == 0 and "multilabel" in board.stdout and "macro_f1" in board.stdout, board.stderr
        assert "micro_f1" in (package / "README.md").read_text()
        assert record["baseline_metric"] == pytest.approx(meta.metrics.test_majority_baseline["macro_f1"])
