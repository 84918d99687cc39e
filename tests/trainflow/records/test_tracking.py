"""W&B tracking without a server: the curve a TrialLogger keeps, and lineage artifacts written
to offline run files (read back from the .wandb file itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
import wandb

from tests.wandb_records import artifacts, kinds
from trainflow.core.config import TrackingConfig
from trainflow.records.tracking import TrialLogger, lineage_artifact, lineage_ref, log_lineage


def test_trial_logger_keeps_one_point_per_step_and_replays_after_resume() -> None:
    log = TrialLogger(None)
    for step in (1, 2, 3, 4):
        log.log(step, {"train/loss": 1.0 / step})
        if step == 2:
            log.log(step, {"val/accuracy": 0.6})  # an eval lands on its step's point
    assert log.points[1] == {"step": 2, "train/loss": 0.5, "val/accuracy": 0.6}
    assert [p["step"] for p in log.points] == [1, 2, 3, 4]
    # An attempt that resumed from a step-2 checkpoint replays step 3: later points are dropped.
    resumed = TrialLogger(None, log.points)
    resumed.log(3, {"train/loss": 0.3})
    resumed.log(3, {"val/loss": 0.2})
    assert [p["step"] for p in resumed.points] == [1, 2, 3]
    assert resumed.points[2] == {"step": 3, "train/loss": 0.3, "val/loss": 0.2}
    assert log.points[2] == {"step": 3, "train/loss": 1.0 / 3}  # the seed is not modified


def test_lineage_ref_names_and_validation() -> None:
    assert lineage_ref("rt", "dataset", "17") == "rt-dataset:run-17"
    assert lineage_ref("rt", "trial-model", "17", trial=3) == "rt-trial-model:run-17-trial-3"
    with pytest.raises(ValueError, match="unknown lineage kind"):
        lineage_ref("rt", "weights", "17")


def test_offline_lineage_artifact_records_its_parents(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"rows")
    art = lineage_artifact(model_name="m", kind="best-model", run_key="k1", path=data,
                           parents=("m-trial-model:run-k1-trial-0",), metadata={"trial": 0})  # fmt: skip
    ref = log_lineage(tracking=TrackingConfig(wandb_mode="offline"), artifact=art, group="k1", job_type="select",
                      directory=tmp_path)  # fmt: skip
    assert ref == "m-best-model:run-k1"
    # wandb-core writes the run file from its own process and may still be flushing it when
    # finish() returns (CI once read an empty file); teardown waits for the service to exit.
    wandb.teardown()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*-k1-select")
    (run_file,) = run_dir.glob("run-k1-select.wandb")
    assert kinds(run_file)[0] == "header" and "exit" in kinds(run_file)
    (logged,) = artifacts(run_file)
    assert logged["name"] == "m-best-model" and logged["type"] == "model"
    assert "run-k1" in logged["aliases"]
    assert logged["metadata"]["parents"] == ["m-trial-model:run-k1-trial-0"]
    assert logged["metadata"]["trial"] == 0 and logged["metadata"]["kind"] == "best-model"
    assert "parents: m-trial-model:run-k1-trial-0" in logged["description"]
    assert logged["entries"] == ["train.parquet"] and logged["refs"] == [(data / "train.parquet").as_uri()]


def test_disabled_tracking_logs_nothing(tmp_path: Path) -> None:
    art = lineage_artifact(model_name="m", kind="dataset", run_key="k", path=tmp_path)
    assert log_lineage(tracking=TrackingConfig(wandb_mode="disabled"), artifact=art, group="k", job_type="dataset",
                       directory=tmp_path) is None  # fmt: skip
    assert not (tmp_path / "wandb").exists()
