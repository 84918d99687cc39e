from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny import build_tiny_bert, rt_texts, tiny_config

os.environ.setdefault("METAFLOW_USER", "trainflow-test")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), rt_texts())


@pytest.fixture
def tiny_cfg(tmp_path: Path, tiny_model_dir: Path) -> dict:
    return tiny_config(tmp_path, tiny_model_dir)
