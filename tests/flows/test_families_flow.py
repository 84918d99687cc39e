"""The whole flow for base models of other families than BERT, with the shipped defaults: a config
that extends config/dev.yaml (embeddings and the lowest layers frozen, the default INT8 recipe)
and names a local DistilBERT, RoBERTa or GPT-2 folder, as a user brings one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.families import build_family
from tests.tiny import ROOT, RT_DATA, rt_texts
from trainflow.package import load
from trainflow.release.metadata import read_metadata

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("family", ["distilbert", "roberta", "gpt2"])
def test_the_flow_publishes_a_package_for_another_family(family: str, tmp_path: Path) -> None:
    base = build_family(family, tmp_path / family, rt_texts(400))
    config = tmp_path / "mine.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "extends": str(ROOT / "config" / "dev.yaml"),
        "name": f"mine-{family}",
        "data": {"path": str(RT_DATA), "max_rows": 600},
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
    predictions = load(package).predict(rt_texts(8))
    assert {p.label for p in predictions} <= {"rotten", "fresh"}
