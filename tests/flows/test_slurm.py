"""Trials on a real single-node SLURM cluster (scripts/local_cluster.sh): munged, slurmctld,
slurmd, sshd on 127.0.0.1 and a SeaweedFS S3 gateway as the Metaflow datastore."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.secret_scan import PLANTED, files_containing
from tests.tiny import ROOT, tiny_config, write_config
from trainflow.records.store import query
from trainflow.release.package import verify_package

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SCRIPT = ROOT / "scripts" / "local_cluster.sh"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Start the cluster (idempotent), yield its environment, stop it by PID afterwards."""
    if os.geteuid() != 0 or (shutil.which("apt-get") is None and shutil.which("slurmctld") is None):
        if os.environ.get("CI"):
            pytest.fail("CI must run the SLURM tests (needs root for apt-get and the daemons)")
        pytest.skip("the local SLURM cluster needs root")
    state = tmp_path_factory.mktemp("cluster")
    # The cluster's jobs and its S3 store use the interpreter environment running the tests.
    env = {**os.environ, "TRAINFLOW_CLUSTER_DIR": str(state), "TRAINFLOW_VENV": str(Path(sys.executable).parent.parent)}
    t0 = time.perf_counter()
    out = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    startup = time.perf_counter() - t0
    for line in Path(out.stdout.strip().splitlines()[-1]).read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    env["METAFLOW_USER"] = "slurmtest"
    env["WANDB_MODE"] = "offline"
    try:
        yield {"env": env, "state": state, "startup_s": startup}
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def _run_flow(tmp: Path, model_dir: Path, env: dict, **overrides) -> subprocess.CompletedProcess:
    cfg = write_config(tmp / "cfg.yaml", tiny_config(tmp, model_dir, **overrides))
    return subprocess.run(
        [sys.executable, str(ROOT / "flows" / "train_flow.py"), "--config", "config", str(cfg), "run"],
        cwd=tmp, env={**env, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp)}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _slurm_jobs(tmp: Path, env: dict, run_id: str) -> list[str]:
    """SLURM job ids that Metaflow recorded for the run's train tasks (task metadata)."""
    code = (
        "import json; from metaflow import Run, namespace; namespace(None);"
        f"r = Run('TrainFlow/{run_id}');"
        "print(json.dumps([m.value for t in r['train'] for m in t.metadata if m.name == 'slurm-job-id']))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True,
                         env={**env, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp)}, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _scontrol(job: str, env: dict) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def _run_id(proc: subprocess.CompletedProcess) -> str:
    return re.search(r"\[(\d+)/start/", proc.stdout + proc.stderr).group(1)


def test_trials_run_as_slurm_jobs_and_publish_the_same_package(
    cluster, tmp_path, tiny_model_dir, tiny_flow_run
) -> None:
    """The same tiny config as the shared local run (`tiny_flow_run`), with the trials on SLURM."""
    # A W&B key planted in the submitting environment must reach no file: not the job scripts
    # (metaflow-slurm writes `export NAME='value'` lines for the step's @environment), not the run.
    env = {**cluster["env"], "WANDB_API_KEY": PLANTED["WANDB_API_KEY"]}
    assert cluster["startup_s"] < 60
    t0 = time.perf_counter()
    proc = _run_flow(tmp_path, tiny_model_dir, env, compute__backend="slurm", tracking__wandb_mode="offline")
    slurm_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = _slurm_jobs(tmp_path, env, _run_id(proc))
    assert len(jobs) == 2, "one SLURM job per foreach worker"
    for job in jobs:
        info = _scontrol(job, env)
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0"
        assert "train" in info["JobName"] and info["Partition"] == "debug"
        assert info["TimeLimit"] == "01:00:00", "compute.time_minutes reaches sbatch as minutes"
    jobcomp = (cluster["state"] / "log" / "jobcomp.log").read_text()
    assert all(f"JobId={j} " in jobcomp for j in jobs)
    scripts = sorted((cluster["state"] / "workdir").glob("*.sh"))
    assert scripts, "the job scripts are kept in the remote workdir"
    leaks = files_containing([tmp_path, cluster["state"] / "workdir"], {"WANDB_API_KEY": PLANTED["WANDB_API_KEY"]})
    assert not leaks, leaks

    packages = [next((d / "artifacts" / "tiny").iterdir()) for d in (tmp_path, tiny_flow_run.root)]
    files = [set(verify_package(p)) for p in packages]
    assert files[0] == files[1]
    metas = [json.loads((p / "metadata.json").read_text()) for p in packages]
    assert set(metas[0]) == set(metas[1]) and set(metas[0]["metrics"]) == set(metas[1]["metrics"])
    local = tiny_flow_run.run
    local_s = (local.finished_at - local.created_at).total_seconds()
    # Both workers run side by side in either case, so the difference is the cost of one SLURM job.
    print(f"\nSLURM run {slurm_s:.0f} s vs local {local_s:.0f} s: {slurm_s - local_s:.0f} s more per SLURM job")


def test_retry_resubmits_a_killed_job_and_resumes_from_its_checkpoint(cluster, tmp_path, tiny_model_dir) -> None:
    env = cluster["env"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "flows" / "train_flow.py"), "--config", "config",
         str(write_config(tmp_path / "cfg.yaml", tiny_config(
             tmp_path, tiny_model_dir, compute__backend="slurm", compute__retries=1, hpo__n_trials=1,
             hpo__n_workers=1, train__max_steps=1500, train__checkpoint_every=100000, train__eval_every=1500,
             tracking__wandb_mode="offline"))),
         "run"],
        cwd=tmp_path, env={**env, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)},
        stdout=(tmp_path / "flow.log").open("w"), stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    job = _wait_for_training_job(env, tmp_path)
    # No regular checkpoint is due (checkpoint_every is huge): the only one is the one the signal
    # forces. SLURM delivers the signal to every process of the job step; the trainer checkpoints
    # and exits 1; @retry resubmits; the new job resumes from that checkpoint.
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)
    proc.wait(timeout=900)
    out = (tmp_path / "flow.log").read_text()
    assert proc.returncode == 0, out[-4000:]
    # The signalled job's own last log lines may not reach the datastore (it is torn down), so
    # the proof is in SLURM's state and in the retry's resume step.
    assert _scontrol(job, env)["JobState"] == "FAILED"
    retry_job = str(int(job) + 1)
    assert _scontrol(retry_job, env)["JobState"] == "COMPLETED"
    (run_key,) = query(tmp_path / "artifacts", "SELECT run_key FROM runs")[1][0]
    records = subprocess.run(
        [sys.executable, "-m", "trainflow.app.cli", "trials", run_key, "--artifact-root", str(tmp_path / "artifacts")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "COMPLETE" in records
    resumed = re.findall(r"resumed from .* at step (\d+)", out)
    # No regular checkpoint was due before step 100000: a resume past step 0 can only come from
    # the checkpoint the signal forced.
    assert resumed and 0 < int(resumed[-1]) < 1500, resumed


def _wait_for_training_job(env: dict, root: Path, timeout: float = 300) -> str:
    """The id of the running SLURM job once its trial has started training."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "Workflow failed" in (root / "flow.log").read_text():
            raise AssertionError((root / "flow.log").read_text()[-4000:])
        jobs = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True).stdout.split()
        started = list(root.glob("runs/tiny/*/wandb/offline-run-*-trial-*"))  # a trial run, not start's lineage run
        if len(jobs) >= 2 and jobs[1] == "RUNNING" and started:
            time.sleep(3)
            return jobs[0]
        time.sleep(0.5)
    raise AssertionError("no running SLURM job started training")


def test_kubernetes_backend_compiles_to_a_spec_with_image_gpu_and_command(cluster, tmp_path, tiny_model_dir) -> None:
    """No Kubernetes cluster exists here: compile the Argo Workflows spec (S3 datastore from the
    local cluster) and check the train template. Untested against a live cluster."""
    cfg = write_config(tmp_path / "k8s.yaml", tiny_config(
        tmp_path, tiny_model_dir, compute__backend="kubernetes", compute__image="ghcr.io/example/trainflow:0.1",
        compute__gpus=1, compute__cpus=4, compute__memory_mb=16000, publish__run_root="/mnt/shared/runs"))  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(ROOT / "flows" / "train_flow.py"), "--config", "config", str(cfg),
         "argo-workflows", "create", "--only-json"],
        cwd=tmp_path, env=cluster["env"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    spec = json.loads(out.stdout[out.stdout.index("{") :])
    templates = {t["name"]: t for t in spec["spec"]["templates"] if "container" in t}
    train = templates["train"]["container"]
    assert train["image"] == "ghcr.io/example/trainflow:0.1"
    assert train["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert float(train["resources"]["requests"]["cpu"]) == 4
    assert "step train" in train["command"][-1]
    assert templates["export"]["container"]["image"] != train["image"], "only the trials get the trial image"
    # The students train like trials (the step runs only with distill.enabled; its template is there).
    assert templates["distill"]["container"]["image"] == train["image"]
    assert templates["distill"]["container"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
