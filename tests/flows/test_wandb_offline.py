"""After the tiny flow run (W&B offline): every offline run folder is complete, the artifacts form
the chain dataset -> trial model -> best model -> FP32 ONNX -> INT8 package, and `wandb sync
--dry-run` (wandb 0.31 has no `--view`/`--show`) lists every run without a key or a network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wandb_records import artifacts, kinds

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = ("dataset", "trial-0", "trial-1", "select", "export", "publish")


@pytest.fixture(scope="module")
def offline_runs(tiny_flow_run) -> dict[str, Path]:
    """job name -> offline run folder (run ids are `<metaflow run id>-<job>`)."""
    key = tiny_flow_run.run.data.ctx.run_key
    folders = sorted((Path(tiny_flow_run.run.data.ctx.run_dir) / "wandb").glob("offline-run-*"))
    return {f.name.split(f"-{key}-", 1)[1]: f for f in folders}


def test_offline_run_folders_are_complete(offline_runs) -> None:
    assert sorted(offline_runs) == sorted(JOBS)
    for job, folder in offline_runs.items():
        run_id = folder.name.split("-", 3)[3]  # offline-run-<date>_<time>-<id>
        run_file = folder / f"run-{run_id}.wandb"
        assert run_file.is_file(), f"{job}: no {run_file.name}"
        assert (folder / "files").is_dir() and (folder / "logs").is_dir()
        seen = kinds(run_file)
        # header first; run metadata; an exit record means the run was finished, not cut off.
        assert seen[0] == "header" and "run" in seen and seen[-1] == "exit", f"{job}: {seen}"
    trial = kinds(next((offline_runs["trial-0"]).glob("*.wandb")))
    assert trial.count("history") >= 6, "per-step training values were logged"


def test_artifacts_form_the_lineage_chain(offline_runs, tiny_flow_run) -> None:
    data = tiny_flow_run.run.data
    logged = {}
    for job, folder in offline_runs.items():
        for art in artifacts(next(folder.glob("*.wandb"))):
            alias = next(a for a in art["aliases"] if a.startswith("run-"))
            logged[f"{art['name']}:{alias}"] = {**art, "job": job}
    chain, ref = [], f"tiny-int8-package:run-{data.ctx.run_key}"
    while ref:
        art = logged[ref]  # every parent named in metadata was logged by this run
        chain.append((art["metadata"]["kind"], art["type"], art["job"]))
        (ref,) = art["metadata"]["parents"] or [None]
    assert chain == [
        ("int8-package", "package", "publish"),
        ("onnx-fp32", "onnx", "export"),
        ("best-model", "model", "select"),
        ("trial-model", "model", f"trial-{data.best.number}"),
        ("dataset", "dataset", "dataset"),
    ]
    package = logged[f"tiny-int8-package:run-{data.ctx.run_key}"]
    assert package["metadata"]["version"] == data.package.version
    assert {"model.onnx", "model_int8.onnx", "metadata.json"} <= set(package["entries"])
    assert logged[f"tiny-dataset:run-{data.ctx.run_key}"]["metadata"]["sha256"] == data.ctx.snapshot.sha256
    other = 1 - data.best.number
    assert logged[f"tiny-trial-model:run-{data.ctx.run_key}-trial-{other}"]["metadata"]["trial"] == other


def test_wandb_sync_dry_run_lists_every_offline_run(offline_runs, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    # No key, and a server address nothing listens on: the check must not need the network.
    env.update(WANDB_BASE_URL="http://127.0.0.1:9", WANDB_CONFIG_DIR=str(tmp_path), HOME=str(tmp_path))
    wandb_cli = Path(sys.executable).with_name("wandb")
    done = subprocess.run(
        [str(wandb_cli), "sync", "--dry-run", *map(str, offline_runs.values())],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert f"Would sync {len(JOBS)} run(s)" in out
    for folder in offline_runs.values():
        assert next(folder.glob("*.wandb")).name in out
