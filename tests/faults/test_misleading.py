"""Errors that used to mislead, and data that changed behind the run's back (issue 11, points 10,
11, 13 and 14)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from tests.faults.test_disk_full import _fill, small_disk  # noqa: F401 (fixture)
from tests.tiny import ROOT, rt_texts
from trainflow.convert.export import export_onnx
from trainflow.convert.quantize import quantize_and_gate
from trainflow.core.config import ComputeConfig, CostConfig, DataConfig, ExportConfig, QuantizeConfig, TaskConfig
from trainflow.core.errors import DatasetError, DiskSpaceError
from trainflow.core.faults import PAUSE_ENV, TEST_MODE_ENV
from trainflow.data.dataset import SplitData, load_split, snapshot_dataset
from trainflow.records.cost import TaskTiming, declared_resources, price_tasks

TASK = TaskConfig(type="classification", labels=["neg", "pos"])


def _csv(path: Path, n: int, offset: int = 0) -> Path:
    rows = [{"id": str(i + offset), "text": f"text {i + offset}", "label": ["neg", "pos"][i % 2]} for i in range(n)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_the_dataset_is_hashed_and_parsed_from_the_same_bytes(tmp_path: Path, monkeypatch) -> None:
    """10. The file changes between the moment it is hashed and the moment it is parsed: the
    recorded SHA-256 must be that of the rows that were used."""
    path = _csv(tmp_path / "d.csv", 40)
    newer = _csv(tmp_path / "newer.csv", 60, offset=1000).read_bytes()
    real = Path.read_bytes

    def changed_meanwhile(self: Path) -> bytes:
        return newer if self == path else real(self)  # what a reader sees once the writer is done

    monkeypatch.setattr(Path, "read_bytes", changed_meanwhile)
    snap = snapshot_dataset(data=DataConfig(path=str(path), min_split_rows=2), task=TASK, seed=0,
                            out_dir=tmp_path / "out")  # fmt: skip
    assert snap.rows == 60 and snap.sha256 == hashlib.sha256(newer).hexdigest()


def test_an_edited_split_file_is_refused_on_load(tmp_path: Path) -> None:
    """10. train.parquet edited after the snapshot: every later load (train, export, quantize,
    resume) refuses it."""
    snap = snapshot_dataset(data=DataConfig(path=str(_csv(tmp_path / "d.csv", 80)), min_split_rows=2), task=TASK, seed=0,
                            out_dir=tmp_path / "out")  # fmt: skip
    assert set(snap.split_sha256) == {"train", "validation", "test", "calibration"}
    assert load_split(snap, "train").labels
    frame = pd.read_parquet(tmp_path / "out" / "train.parquet")
    frame.loc[0, "label"] = 1 - frame.loc[0, "label"]  # one flipped label
    frame.to_parquet(tmp_path / "out" / "train.parquet", index=False)
    with pytest.raises(DatasetError, match="split 'train' of dataset d-.* changed since the snapshot was taken"):
        load_split(snap, "train")
    assert load_split(snap, "test").texts, "the untouched splits still load"


def test_export_on_a_full_disk_says_so(tmp_path: Path, tiny_trained: Path, small_disk: Path) -> None:  # noqa: F811
    """11. Before: Optimum failed half-way with a bare OSError."""
    _fill(small_disk, leave=(1 << 20) // 4)
    with pytest.raises(DiskSpaceError, match="not enough disk for the ONNX export"):
        export_onnx(model_dir=tiny_trained, out_dir=small_disk / "onnx", export=ExportConfig())
    assert not list((small_disk).glob("onnx/*.onnx"))


def test_quantize_on_a_full_disk_says_so_not_no_recipe_passes(
    tmp_path: Path,
    tiny_onnx: Path,
    small_disk: Path,  # noqa: F811
) -> None:
    """11. Before: each recipe's OSError was caught as a failed recipe, and the step ended with
    "no INT8 recipe keeps test accuracy"."""
    from transformers import AutoTokenizer

    onnx_dir = small_disk / "onnx"
    shutil.copytree(tiny_onnx, onnx_dir)
    _fill(small_disk, leave=(1 << 20) // 4)
    texts = rt_texts(32)
    split = SplitData([str(i) for i in range(32)], texts, [i % 2 for i in range(32)])
    with pytest.raises(DiskSpaceError, match="not enough disk for the INT8 recipe search"):
        quantize_and_gate(fp32_path=onnx_dir / "model.onnx", tokenizer=AutoTokenizer.from_pretrained(onnx_dir),
                          task="classification", n_classes=2, cutpoints=None, calibration=split, test=split,
                          max_length=32, q=QuantizeConfig(max_accuracy_drop=1.0))  # fmt: skip


def test_clock_skew_between_hosts_is_priced_not_fatal(caplog) -> None:
    """13. A task whose end (recorded on one host) is before its start (another host)."""
    rates = CostConfig()
    per_step, default = declared_resources(compute=ComputeConfig(), cost=rates)
    t0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
    with caplog.at_level(logging.WARNING, logger="trainflow.records.cost"):
        cost = price_tasks(timings=[TaskTiming("train", "2", t0, t0 - timedelta(seconds=3)),
                                    TaskTiming("end", "3", t0, t0 + timedelta(seconds=60))],
                           resources=per_step, default=default, rates=rates, now=t0)  # fmt: skip
    assert [t.seconds for t in cost.tasks] == [0.0, 60.0]
    assert "clocks of different hosts disagree" in caplog.text


def test_the_fault_pause_hook_needs_test_mode(tmp_path: Path) -> None:
    """14. TRAINFLOW_FAULT_PAUSE alone (a stray variable) no longer holds a step for an hour."""
    code = "from trainflow.core.faults import fault_window; fault_window('start'); print('went on')"
    env = {**os.environ, PAUSE_ENV: "start", "PYTHONPATH": str(ROOT)}
    env.pop(TEST_MODE_ENV, None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "went on" in done.stdout
    assert f"{TEST_MODE_ENV} is not 1: ignored" in done.stderr
