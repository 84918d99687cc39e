from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typing_extensions

from tests.tiny import ROOT, build_tiny_bert, rt_texts, tiny_config

os.environ.setdefault("METAFLOW_USER", "trainflow-test")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# metaflow's Runner (the flow tests use it in this process) imports its vendored typing_extensions,
# which patches `typing` so that torch._inductor's generic classes (ModernBERT's module imports them)
# fail to build afterwards (https://github.com/Netflix/metaflow/issues/2462). The installed
# typing_extensions stands in for the vendored copy in the test process; flows run as a CLI never
# load it.
sys.modules.setdefault("metaflow._vendor.typing_extensions", typing_extensions)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), rt_texts())


@pytest.fixture
def tiny_cfg(tmp_path: Path, tiny_model_dir: Path) -> dict:
    return tiny_config(tmp_path, tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny classifier saved by `save_model` (random head, a few steps of training)."""
    from trainflow.core.config import parse_config_dict
    from trainflow.data.dataset import SplitData
    from trainflow.training.hparams import Hyperparams
    from trainflow.training.train import train_model

    tmp = tmp_path_factory.mktemp("trained")
    cfg = parse_config_dict(tiny_config(tmp, tiny_model_dir))
    texts = rt_texts(64)
    split = SplitData([str(i) for i in range(64)], texts, [i % 2 for i in range(64)])
    hp = Hyperparams(learning_rate=1e-3, weight_decay=0.0, warmup_ratio=0.0, batch_size=8, max_steps=3)
    result = train_model(cfg=cfg, hparams=hp, train=split, validation=split, out_dir=tmp, seed=0)
    return Path(result.model_dir)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_trained: Path) -> Path:
    from trainflow.convert.export import export_onnx
    from trainflow.core.config import ExportConfig

    out = tmp_path_factory.mktemp("onnx") / "onnx"
    export_onnx(model_dir=tiny_trained, out_dir=out, export=ExportConfig())
    return out


@dataclass(frozen=True)
class FlowRun:
    """One finished run of flows/train_flow.py on tiny data (shared by the flow-level tests)."""

    pathspec: str  # TrainFlow/<run id>
    root: Path  # its datastore root and cwd
    env: dict[str, str]  # the environment it ran with (for CLI calls such as `card get`)

    @property
    def run(self) -> Any:
        """The metaflow.Run, read from this run's datastore. The client keeps one local datastore
        root per process, and every Runner (other tests start their own) moves it."""
        from metaflow import Run, metadata

        metadata(f"local@{self.root}")
        return Run(self.pathspec, _namespace_check=False)


@pytest.fixture(scope="session")
def tiny_flow_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> FlowRun:
    """Run TrainFlow once (W&B offline) through metaflow.Runner: a flow run takes minutes here.
    Under generous deployment limits, so each trial's INT8 latency and size are measured (and
    every trial is within them)."""
    from metaflow import Runner

    from tests.tiny import ROOT, write_config

    root = tmp_path_factory.mktemp("flow")
    cfg = tiny_config(root, tiny_model_dir, tracking__wandb_mode="offline",
                      hpo__constraints={"max_latency_ms": 1000, "max_size_mb": 100})  # fmt: skip
    config_path = write_config(root / "cfg.yaml", cfg)
    env = {**os.environ, "METAFLOW_USER": "e2e", "WANDB_MODE": "offline", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root)}
    with Runner(str(ROOT / "flows" / "train_flow.py"), show_output=False, cwd=str(root), env=env,
                config=[("config", str(config_path))]).run() as running:  # fmt: skip
        run = running.run
        assert run.successful, running.stderr
    return FlowRun(run.pathspec, root, env)


CHROMIUM_INSTALL = ROOT / "scripts" / "install_chromium.sh"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser's path: found, or installed by scripts/install_chromium.sh (apt-get)."""
    done = subprocess.run([str(CHROMIUM_INSTALL)], capture_output=True, text=True, timeout=900)
    path = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not os.access(path, os.X_OK):
        pytest.fail(f"no headless Chromium and {CHROMIUM_INSTALL} could not install one:\n{done.stderr[-2000:]}")
    return path
