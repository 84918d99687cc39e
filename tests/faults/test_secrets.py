"""Credentials placed in the config are refused or never written out (issue 11, point 6).

A real PostgreSQL server holds the Optuna study; its password is given once literally in
`hpo.storage` and once as a `${VAR}` reference. The whole pipeline (stages, W&B offline) runs
and then every file it wrote is searched for the password, also inside Parquet and gzip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.publish import publish_run
from tests.faults.secret_scan import files_containing
from tests.pipeline import searched_and_quantized
from tests.postgres import postgres_server
from tests.tiny import tiny_config
from trainflow.core.config import parse_config_dict
from trainflow.core.errors import ConfigError
from trainflow.records.store import query
from trainflow.release.metadata import read_metadata

PASSWORD = "pw-0123456789abcdef0123456789abcdef01234"  # fake, 40 characters like a real one

pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("key", ["WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "DB_PASSWORD", "MY_CREDENTIALS"])
def test_secret_looking_slurm_env_keys_are_refused(tiny_cfg: dict, key: str) -> None:
    tiny_cfg["compute"] = {"backend": "slurm", "slurm": {"env": {key: "x", "OMP_NUM_THREADS": "1"}}}
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg)
    (problem,) = info.value.problems
    assert problem.startswith(f"compute.slurm.env.{key}: looks like a secret") and "README, Secrets" in problem


def _pipeline(tmp: Path, model_dir: Path, storage: str) -> Path:
    raw = tiny_config(tmp, model_dir, tracking__wandb_mode="offline")
    raw["hpo"].update(n_trials=1, n_workers=1, pruner="none", storage=storage)
    raw["quantize"].update(search=False, recipes=[{"name": "u8s8-minmax"}])
    cfg = parse_config_dict(raw)
    ctx, best, records, exported, quant = searched_and_quantized(cfg)
    package = publish_run(cfg=cfg, ctx=ctx, best=best, records=records, exported=exported, quant=quant,
                          pathspec="TrainFlow/r1/publish/6", version="v1-r1")  # fmt: skip
    return Path(package.path)


def test_database_passwords_never_reach_a_written_file(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    with postgres_server(PASSWORD) as pg:
        # Literal password in the config: used to connect, redacted wherever trainflow writes the config.
        literal = tmp_path / "literal"
        pkg = _pipeline(literal, tiny_model_dir, pg.url())
        stored = read_metadata(pkg).config["hpo"]["storage"]
        assert stored == pg.url("***")
        (config,) = query(literal / "artifacts", "SELECT config FROM runs")[1][0]
        assert json.loads(config)["hpo"]["storage"] == pg.url("***")
        assert list((literal / "runs").rglob("wandb/offline-run-*")), "W&B wrote its offline runs"
        assert files_containing([literal], {"password": PASSWORD}) == {}
        # The supported way: a reference, expanded only when the storage is opened.
        monkeypatch.setenv("TRAINFLOW_TEST_DB_PASSWORD", PASSWORD)
        referenced = tmp_path / "referenced"
        pkg = _pipeline(referenced, tiny_model_dir, pg.url("${TRAINFLOW_TEST_DB_PASSWORD}"))
        assert read_metadata(pkg).config["hpo"]["storage"] == pg.url("${TRAINFLOW_TEST_DB_PASSWORD}")
        assert files_containing([referenced], {"password": PASSWORD}) == {}


def test_a_missing_password_variable_is_one_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"(?s)hpo.storage.*TRAINFLOW_UNSET_PASSWORD.*is not set"):
        _pipeline(tmp_path, tiny_model_dir, "postgresql+psycopg://u:${TRAINFLOW_UNSET_PASSWORD}@127.0.0.1:1/db")
