from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.tiny import ROOT
from trainflow.core.config import RunConfig, load_config, metaflow_config_parser, parse_config_dict
from trainflow.core.errors import ConfigError

CONFIG_DIR = ROOT / "config"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates_and_opens_with_a_comment(path: Path) -> None:
    assert path.read_text().startswith("#"), f"{path.name} must open with a comment saying what it is for"
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert Path(cfg.data.path).suffix in {".gz", ".csv", ".jsonl", ".parquet"}


def test_all_problems_reported_at_once(tiny_cfg: dict) -> None:
    tiny_cfg["train"]["max_steps"] = "many"  # wrong type
    tiny_cfg["train"]["epochs"] = 3  # unknown key
    tiny_cfg["hpo"]["pruner"] = "asha"  # not an option
    del tiny_cfg["task"]  # missing
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg, "t.yaml")
    msg = str(info.value)
    assert "4 problem(s) in config t.yaml" in msg
    for fragment in ("train.max_steps", "train.epochs: unknown key", "hpo.pruner", "task: required key is missing"):
        assert fragment in msg


def test_impossible_combinations_are_all_listed(tiny_cfg: dict) -> None:
    tiny_cfg["hpo"].update(n_workers=5, n_trials=2, metric="mae")
    tiny_cfg["task"]["labels"] = ["a", "a"]
    tiny_cfg["data"].update(validation_fraction=0.5, test_fraction=0.45)
    tiny_cfg["train"]["device"] = "cpu"
    tiny_cfg["compute"] = {"gpus": 1}
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg)
    problems = info.value.problems
    assert len(problems) == 5, problems
    assert any("hpo.metric: 'mae'" in p for p in problems)
    assert any("duplicates" in p for p in problems)
    assert any("leaves under 10% to train" in p for p in problems)
    assert any("hpo.n_workers: 5 exceeds" in p for p in problems)
    assert any("conflicts with compute.gpus" in p for p in problems)


def test_config_is_immutable(tiny_cfg: dict) -> None:
    cfg = parse_config_dict(tiny_cfg)
    with pytest.raises(Exception, match="frozen"):
        cfg.seed = 5  # type: ignore[misc]


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_metaflow_parser_round_trips(tiny_cfg: dict) -> None:
    as_dict = metaflow_config_parser(yaml.safe_dump(tiny_cfg))
    assert RunConfig.model_validate(as_dict) == parse_config_dict(tiny_cfg)
    assert parse_config_dict(tiny_cfg).hpo.direction == "maximize"


def test_cross_field_problems_are_reported_with_an_invalid_field(tiny_cfg: dict) -> None:
    """A bad value in one section does not hide the combination problems of the others."""
    tiny_cfg["train"]["max_steps"] = -1
    tiny_cfg["task"]["labels"] = ["a", "a"]
    tiny_cfg["hpo"].update(n_workers=5, n_trials=2)
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg)
    problems = info.value.problems
    assert any(p.startswith("train.max_steps:") for p in problems)
    assert any("task.labels: ['a', 'a'] has duplicates" in p for p in problems)
    assert any("hpo.n_workers: 5 exceeds hpo.n_trials 2" in p for p in problems)
    # A check that reads the invalid section is skipped, not run on a default.
    tiny_cfg["train"]["device"] = "cuda"
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg)
    assert not any("train.device" in p for p in info.value.problems)


def _write(path: Path, text: str) -> Path:
    path.write_text("# test overlay\n" + text)
    return path


def test_extends_merges_mappings_and_replaces_lists(tmp_path: Path, tiny_cfg: dict) -> None:
    (tmp_path / "conf").mkdir()
    _write(tmp_path / "conf" / "base.yaml", yaml.safe_dump(tiny_cfg))
    child = _write(tmp_path / "conf" / "child.yaml", "extends: base.yaml\nname: child\ntrain: {max_steps: 9}\n"
                   "task: {labels: [a, b, c]}\n")  # fmt: skip
    cfg = load_config(child)
    assert cfg.name == "child" and cfg.train.max_steps == 9
    assert cfg.train.batch_size == tiny_cfg["train"]["batch_size"], "a mapping is merged key by key"
    assert cfg.task.labels == ["a", "b", "c"] and cfg.task.type == "classification", "a list is replaced whole"


def test_extends_cycles_and_deep_chains_are_refused_with_the_chain(tmp_path: Path, tiny_cfg: dict) -> None:
    _write(tmp_path / "a.yaml", "extends: b.yaml\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"extends: a.yaml makes a cycle \(.*a.yaml -> .*b.yaml -> .*a.yaml\)"):
        load_config(tmp_path / "a.yaml")
    _write(tmp_path / "l0.yaml", yaml.safe_dump(tiny_cfg))
    for i in range(1, 8):
        _write(tmp_path / f"l{i}.yaml", f"extends: l{i - 1}.yaml\n")
    load_config(tmp_path / "l5.yaml")  # five levels below it: fine
    with pytest.raises(ConfigError, match=r"more than 5 levels \(.*l6.yaml -> .*l5.yaml"):
        load_config(tmp_path / "l6.yaml")
    _write(tmp_path / "orphan.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"extends: nowhere.yaml .* does not exist"):
        load_config(tmp_path / "orphan.yaml")


def test_the_shipped_overlays_resolve_onto_the_base() -> None:
    base, default = load_config(CONFIG_DIR / "base.yaml"), load_config(CONFIG_DIR / "default.yaml")
    assert default == base, "make run's config is the base as it is"
    dev, prod = load_config(CONFIG_DIR / "dev.yaml"), load_config(CONFIG_DIR / "prod.yaml")
    assert dev.data.max_rows == 1200 and dev.retention.environment == "dev" and dev.task == base.task
    assert prod.hpo.n_trials > base.hpo.n_trials and prod.retention.environment == "prod"
    assert (
        metaflow_config_parser((CONFIG_DIR / "dev.yaml").read_text(), str(CONFIG_DIR / "dev.yaml"))["name"] == dev.name
    )
