"""Data of the multi-label, regression and text-pair tasks, as real files: what is read, and every
problem reported at once with its row numbers, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainflow.core.config import DataConfig, TaskConfig, parse_config_dict
from trainflow.core.errors import ConfigError, DatasetError
from trainflow.data.dataset import inspect_dataset, load_split, snapshot_dataset

TAGS = TaskConfig(type="multilabel", labels=["plot", "acting", "music"])
VALUE = TaskConfig(type="regression")


def _data(path: Path, **over) -> DataConfig:
    return DataConfig(path=str(path), min_split_rows=2, **over)


def test_multilabel_sets_from_csv_and_jsonl_lists_with_empty_rows(tmp_path: Path) -> None:
    sets = ["plot;acting", "", "music", " acting ; plot ", "plot", "acting;music;plot"] * 10
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"review {i}" for i in range(60)], "label": sets}).to_csv(path, index=False)
    snap = snapshot_dataset(data=_data(path), task=TAGS, seed=0, out_dir=tmp_path / "out")
    assert snap.labels == {"plot": 40, "acting": 30, "music": 20, "(no label)": 10}
    rows = load_split(snap, "train").labels + load_split(snap, "validation").labels + load_split(snap, "test").labels
    assert (
        sorted(map(tuple, rows)).count((1.0, 1.0, 0.0)) == 20 and sorted(map(tuple, rows)).count((0.0, 0.0, 0.0)) == 10
    )
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"r {i}", "label": s.split(";") if s else []})
                               for i, s in enumerate(sets)))  # fmt: skip
    found = inspect_dataset(data=_data(jsonl), task=TAGS, seed=0)
    assert np.asarray(found.frame["label"].tolist()).sum(axis=0).tolist() == [40.0, 30.0, 20.0]


def test_multilabel_unknown_and_rare_labels_are_listed_with_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    sets = ["plot"] * 30 + ["acting;dance"] + ["music"] * 2 + ["drama"] + ["acting"] * 26
    pd.DataFrame({"text": [f"t{i}" for i in range(60)], "label": sets}).to_csv(path, index=False)
    with pytest.raises(DatasetError) as info:
        inspect_dataset(data=_data(path), task=TAGS, seed=0)
    message = str(info.value)
    assert "2 problem(s) in 60 rows; nothing was trained" in message
    assert (
        "a label that is not one of ['plot', 'acting', 'music'] in 2 row(s): rows 31 ('dance'), 34 ('drama')" in message
    )
    fixed = [s.replace(";dance", "") if s != "drama" else "plot" for s in sets]
    pd.DataFrame({"text": [f"t{i}" for i in range(60)], "label": fixed}).to_csv(path, index=False)
    with pytest.raises(DatasetError, match=r"label 'music' has \d training row\(s\) \(2 in all\), fewer than"
                                           r" data.min_class_rows 3.*drop it from task.labels"):  # fmt: skip
        inspect_dataset(data=_data(path), task=TAGS, seed=0)
    assert not (tmp_path / "out").exists()


def test_regression_values_and_every_bad_value_with_its_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    values = [str(1 + (i % 10) / 2) for i in range(60)]
    pd.DataFrame({"text": [f"t{i}" for i in range(60)], "score": values}).to_csv(path, index=False)
    snap = snapshot_dataset(data=_data(path, label_column="score"), task=VALUE, seed=0, out_dir=tmp_path / "out")
    train = load_split(snap, "train").labels
    assert all(isinstance(v, float) for v in train) and {1.0, 5.5} <= set(train) | set(load_split(snap, "test").labels)
    assert sum(snap.labels.values()) == 60  # rows per fifth of the value range
    values[4], values[9], values[20] = "", "high", "nan"
    pd.DataFrame({"text": [f"t{i}" for i in range(60)], "score": values}).to_csv(path, index=False)
    with pytest.raises(DatasetError) as info:
        inspect_dataset(data=_data(path, label_column="score"), task=VALUE, seed=0)
    assert ("a missing or non-numeric value in the label column in 3 row(s): rows 5 (''), 10 ('high'), 21 ('nan')"
            in str(info.value))  # fmt: skip
    pd.DataFrame({"text": [f"t{i}" for i in range(60)], "score": ["2"] * 60}).to_csv(path, index=False)
    with pytest.raises(DatasetError, match="every row has the same value 2.0"):
        inspect_dataset(data=_data(path, label_column="score"), task=VALUE, seed=0)


def test_text_pairs_keep_both_texts_in_one_split_and_report_empty_pair_texts(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    # The same first text in every row: only the pair tells rows apart, and the split follows the pair.
    frame = pd.DataFrame({"query": ["same question"] * 60, "doc": [f"answer {i}" for i in range(60)],
                          "label": ["yes", "no"] * 30})  # fmt: skip
    frame.to_csv(path, index=False)
    task = TaskConfig(type="classification", labels=["no", "yes"])
    snap = snapshot_dataset(data=_data(path, text_column="query", text_pair_column="doc"), task=task, seed=0,
                            out_dir=tmp_path / "out")  # fmt: skip
    assert snap.splits["validation"] > 0 and snap.splits["test"] > 0
    test = load_split(snap, "test")
    assert test.pairs is not None and all(t == "same question" for t in test.texts)
    assert test.inputs[0] == ("same question", test.pairs[0])
    frame.loc[[3, 7], "doc"] = ""
    frame.to_csv(path, index=False)
    with pytest.raises(DatasetError, match=r"empty text in the pair column 'doc' in 2 row\(s\): rows 4, 8"):
        inspect_dataset(data=_data(path, text_column="query", text_pair_column="doc"), task=task, seed=0)
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['context'\]"):
        inspect_dataset(data=_data(path, text_column="query", text_pair_column="context"), task=task, seed=0)


def test_task_config_errors_name_the_key(tiny_cfg: dict) -> None:
    tiny_cfg["task"] = {"type": "regression", "labels": ["a", "b"]}
    tiny_cfg["hpo"]["metric"] = "accuracy"
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg)
    message = str(info.value)
    assert "task.labels: a regression task predicts one value; give none or its name, not ['a', 'b']" in message
    assert (
        "hpo.metric: 'accuracy' is not one of ['loss', 'mae', 'mse', 'pearson', 'spearman'] for task regression"
        in message
    )
    tiny_cfg["task"] = {"type": "multilabel"}
    tiny_cfg["hpo"].pop("metric")
    tiny_cfg["registry"] = {"metric": "mae"}
    with pytest.raises(ConfigError) as info:
        parse_config_dict(tiny_cfg)
    assert "a multilabel task needs its label set" in str(info.value)
    assert "registry.metric: 'mae' is not a test metric of task multilabel" in str(info.value)
    tiny_cfg["task"] = {"type": "multilabel", "labels": ["x", "y"]}
    del tiny_cfg["registry"]
    cfg = parse_config_dict(tiny_cfg)
    assert (cfg.hpo.metric, cfg.hpo.direction, cfg.registry.metric) == ("macro_f1", "maximize", "macro_f1")
    tiny_cfg["task"] = {"type": "regression"}
    cfg = parse_config_dict(tiny_cfg)
    assert (cfg.hpo.metric, cfg.hpo.direction) == ("mse", "minimize")


def test_a_scalar_where_a_label_set_belongs_is_a_row_problem(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"t{i}", "label": ["plot"] if i % 2 else ["acting", "music"]} for i in range(60)]
    rows[6]["label"], rows[9]["label"] = 3, True
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(
        DatasetError, match=r"a label that is not one of .* in 2 row\(s\): rows 7 \('3'\), 10 \('True'\)"
    ):
        inspect_dataset(data=_data(path), task=TAGS, seed=0)


def test_a_base_whose_tokenizer_does_not_separate_pairs_is_refused_for_a_pair_task(
    tmp_path: Path, tiny_cfg: dict
) -> None:
    from tests.families import build_family
    from tests.tiny import rt_texts
    from trainflow.app.check import check_model
    from trainflow.core.errors import ModelLoadError

    gpt2 = build_family("gpt2", tmp_path / "gpt2", rt_texts(100))
    tiny_cfg["model"]["base"] = str(gpt2)
    tiny_cfg["data"]["text_pair_column"] = "text"
    with pytest.raises(ModelLoadError, match="joins a text pair .* with nothing between the two texts"):
        check_model(parse_config_dict(tiny_cfg))
    del tiny_cfg["data"]["text_pair_column"]
    assert check_model(parse_config_dict(tiny_cfg))  # single texts: fine
