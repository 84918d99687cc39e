"""`trainflow check --config FILE`: the config and the data checked as a run would, nothing
written (issue 12)."""

from __future__ import annotations

from pathlib import Path

from tests.tiny import ROOT, tiny_config, write_config
from trainflow.app.cli import main as cli


def test_a_good_config_is_ready(capsys) -> None:
    assert cli(["check", "--config", str(ROOT / "config" / "dev.yaml")]) == 0
    out = capsys.readouterr().out
    assert "data data/rotten_tomatoes.csv.gz: 1200 rows" in out and "OK: " in out


def test_every_problem_of_the_data_is_listed_and_nothing_written(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    data = tmp_path / "mine.csv"
    data.write_text("id,text,label\n1,fine,fresh\n1,,rotten\n3,ok,meh\n" + "".join(
        f"{i},film {i},{['fresh', 'rotten'][i % 2]}\n" for i in range(4, 30)))  # fmt: skip
    cfg = tiny_config(tmp_path, tiny_model_dir)
    cfg["data"] = {"path": str(data)}
    assert cli(["check", "--config", str(write_config(tmp_path / "c.yaml", cfg))]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: {data}: 3 problem(s) in 29 rows; nothing was trained:"
    assert err[1:4] == [
        "  - empty text in column 'text' in 1 row(s): rows 2",
        "  - a label that is not one of ['rotten', 'fresh'] in 1 row(s): rows 3 ('meh')",
        "  - a duplicate id in 1 row(s): rows 2 ('1', first at row 1)",
    ]
    assert err[4] == "  label histogram: 'fresh' 14, 'rotten' 14, 'meh' 1"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "artifacts").exists(), "a check writes nothing"


def test_a_config_problem_names_the_file(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir)
    cfg["hpo"]["n_trials"] = 0
    path = write_config(tmp_path / "c.yaml", cfg)
    assert cli(["check", "--config", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"error: 1 problem(s) in config {path}:\n  - hpo.n_trials:")
