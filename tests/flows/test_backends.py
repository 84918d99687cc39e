"""The compute backend wiring (flows/trainflow_backends.py) without a cluster."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.tiny import ROOT
from trainflow.core.config import parse_config_dict


@pytest.fixture(scope="module")
def backends():
    sys.path.insert(0, str(ROOT / "flows"))
    spec = importlib.util.spec_from_file_location("trainflow_backends", ROOT / "flows" / "trainflow_backends.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compute(tiny_cfg: dict, **compute) -> dict:
    tiny_cfg["compute"] = compute
    return parse_config_dict(tiny_cfg).model_dump(mode="json")["compute"]


def test_slurm_attributes_carry_resources_time_gpus_and_image(backends, tiny_cfg, monkeypatch) -> None:
    monkeypatch.setenv("TRAINFLOW_SLURM_PYTHON", "/opt/venv/bin/python")
    compute = _compute(tiny_cfg, backend="slurm", gpus=2, cpus=8, memory_mb=32000, time_minutes=240,
                       slurm={"partition": "gpu", "preempt_signal_seconds": 120})  # fmt: skip
    attrs = backends.slurm_attributes(compute)
    assert attrs == {
        "partition": "gpu", "cpus_per_task": 8, "memory": "32000M", "path_to_python3": "/opt/venv/bin/python",
        "time_minutes": 240, "preempt_signal_seconds": 120, "gres": "gpu:2",
    }  # fmt: skip
    compute["image"] = "/shared/trainflow.sif"
    assert backends.slurm_attributes(compute)["path_to_python3"] == (
        "apptainer exec --nv /shared/trainflow.sif /opt/venv/bin/python"
    )


def test_kubernetes_needs_an_image_and_a_shared_run_root(tiny_cfg) -> None:
    from trainflow.core.errors import ConfigError

    tiny_cfg["compute"] = {"backend": "kubernetes"}
    tiny_cfg["publish"]["run_root"] = "runs"
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg)
    assert any("compute.image" in p for p in info.value.problems)
    assert any("publish.run_root" in p for p in info.value.problems)


def test_kubernetes_attributes(backends, tiny_cfg) -> None:
    compute = _compute(tiny_cfg, backend="kubernetes", gpus=1, cpus=4, memory_mb=16000, image="ghcr.io/x/trainflow:1",
                       kubernetes={"namespace": "ml"})  # fmt: skip
    assert backends.kubernetes_attributes(compute) == {
        "image": "ghcr.io/x/trainflow:1", "cpu": 4, "memory": 16000, "gpu": 1, "namespace": "ml",
    }  # fmt: skip


def test_job_environment_forwards_no_secrets(backends, tiny_cfg, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "sk-planted-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = backends.job_environment(_compute(tiny_cfg, backend="slurm", slurm={"env": {"OMP_NUM_THREADS": "4"}}))
    assert env["HF_HUB_OFFLINE"] == "1" and env["OMP_NUM_THREADS"] == "4"
    assert "METAFLOW_DATASTORE_SYSROOT_LOCAL" in env
    assert not any("planted" in v for v in env.values())


def test_slurm_patches_apply_once(backends) -> None:
    assert backends.patch_metaflow_slurm() is True
    from metaflow_extensions.slurm_ext.plugins.slurm.slurm_decorator import SlurmDecorator

    assert {"gres", "time_minutes", "preempt_signal_seconds"} <= set(SlurmDecorator.defaults)
    assert backends.patch_metaflow_slurm() is True  # idempotent
    assert backends._split_address("login.example.org:2222") == ("login.example.org", 2222)
    assert backends._split_address("login.example.org") == ("login.example.org", None)
