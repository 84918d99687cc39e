"""The students' search: its configuration, its queued trials, workers that train students against
the teacher's outputs, and the pick (a student that keeps the teacher's accuracy, else the teacher)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.search_helpers import work_on_study
from tests.tiny import tiny_config
from trainflow.core.config import parse_config_dict
from trainflow.core.errors import ConfigError
from trainflow.search.distill import ModelSummary, choose, distill_config, open_students_study, within
from trainflow.search.study import open_study, trial_records


def _m(name: str, acc: float, size: float, latency: float, params: int = 1) -> ModelSummary:
    return ModelSummary(name=name, layers=1, params=params, trial=0, validation={"accuracy": acc, "mae": acc},
                        size_mb=size, latency_ms=latency)  # fmt: skip


def test_the_smallest_student_within_the_allowed_drop_ships() -> None:
    teacher = _m("teacher", 0.80, 20.0, 3.0)
    students = [_m("layers-4", 0.800, 14.0, 2.0), _m("layers-2", 0.792, 9.0, 1.1), _m("layers-1", 0.70, 5.0, 0.6)]
    chosen, reason = choose(students, teacher, metric="accuracy", direction="maximize", max_drop=0.01)
    assert chosen is not None and chosen.name == "layers-2"
    assert "student layers-2 ships" in reason and "0.7920" in reason and "0.8000" in reason


def test_the_teacher_ships_when_no_student_keeps_its_accuracy() -> None:
    teacher = _m("teacher", 0.80, 20.0, 3.0)
    students = [_m("layers-2", 0.78, 9.0, 1.1), _m("layers-1", 0.70, 5.0, 0.6)]
    chosen, reason = choose(students, teacher, metric="accuracy", direction="maximize", max_drop=0.01)
    assert chosen is None
    assert reason == ("no student is within 0.01 of the teacher's validation accuracy 0.8000 (best student: layers-2,"
                      " 0.7800): the teacher ships")  # fmt: skip
    assert choose([], teacher, metric="accuracy", direction="maximize", max_drop=0.01) == (
        None, "no student trial completed: the teacher ships")  # fmt: skip


def test_a_metric_to_minimise_allows_the_drop_upwards() -> None:
    assert within(0.505, 0.5, "minimize", 0.01) and not within(0.52, 0.5, "minimize", 0.01)
    assert within(0.8, 0.8, "maximize", 0.0) and not within(0.79, 0.8, "maximize", 0.0)
    teacher = _m("teacher", 0.50, 20.0, 3.0)
    chosen, _ = choose([_m("a", 0.505, 9.0, 1.0), _m("b", 0.49, 12.0, 1.5)], teacher, metric="mae",
                       direction="minimize", max_drop=0.01)  # fmt: skip
    assert chosen is not None and chosen.name == "a"


def test_the_students_search_is_the_teachers_configuration_with_every_student_queued(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    cfg = parse_config_dict(tiny_config(
        tmp_path, tiny_model_dir, model__frozen_layers=1, hpo__sampler="grid",
        hpo__search_space={"train.batch_size": {"choices": [4, 8]}},
        distill={"enabled": True, "student_layers": [1], "student_bases": [str(tiny_model_dir)], "n_trials": 2,
                 "n_workers": 2, "search_space": {"train.learning_rate": {"low": 1e-4, "high": 1e-3, "log": True}}},
    ))  # fmt: skip
    students = ["/students/layers-1", str(tiny_model_dir)]
    dcfg = distill_config(cfg, {"train.batch_size": 4, "model.base": "elsewhere"}, students)
    assert dcfg.train.batch_size == 4 and dcfg.model.frozen_layers == 0 and dcfg.model.base == cfg.model.base
    assert dcfg.hpo.n_trials == 4 and dcfg.hpo.n_workers == 2 and dcfg.hpo.sampler == "tpe"
    assert dcfg.hpo.pruner.type == "none" and dcfg.hpo.constraints is None and not dcfg.hpo.refit
    assert list(dcfg.hpo.search_space) == ["train.learning_rate", "model.base"]
    assert dcfg.hpo.search_space["model.base"].choices == students

    storage = str(tmp_path / "journal")
    study = open_study(dcfg, storage, "s")
    study.enqueue_trial({"model.base": students[0]})  # an attempt that died after queueing one trial
    open_students_study(dcfg, storage, "s", students)
    open_students_study(dcfg, storage, "s", students)  # a retried step queues nothing more
    waiting = open_study(dcfg, storage, "s").get_trials()
    assert sorted(t.system_attrs["fixed_params"]["model.base"] for t in waiting) == sorted(students * 2)


def test_distill_config_errors_name_the_key_and_the_fix(tmp_path: Path, tiny_model_dir: Path) -> None:
    raw = tiny_config(tmp_path, tiny_model_dir, distill={
        "enabled": True, "student_layers": [], "n_workers": 3, "alpha": 1.5,
        "search_space": {"model.base": {"choices": ["x"]}, "train.dropout": {"low": 0.0, "high": 2.0}},
    })  # fmt: skip
    with pytest.raises(ConfigError) as err:
        parse_config_dict(raw)
    text = str(err.value)
    assert "distill.alpha" in text
    raw["distill"]["alpha"] = 0.5
    with pytest.raises(ConfigError) as err:
        parse_config_dict(raw)
    text = str(err.value)
    assert "distill.student_layers: no student to try" in text
    assert "distill.search_space.model.base: the students are fixed" in text
    assert "distill.search_space.train.dropout: 2.0 is not a valid train.dropout" in text
    assert "distill.n_workers: 3 exceeds the 0 student trials" in text
    raw["distill"] = {"enabled": True, "student_layers": [2, 2]}
    with pytest.raises(ConfigError, match="lists a depth twice"):
        parse_config_dict(raw)


def test_student_workers_run_their_queued_trials_against_the_teachers_outputs(
    tmp_path: Path, tiny_trained: Path, splits
) -> None:
    import torch

    from stages.distill import _objective
    from trainflow.search.worker import TrialRole
    from trainflow.training.student import make_student
    from trainflow.training.teacher import teacher_outputs

    cfg = parse_config_dict(tiny_config(tmp_path, tiny_trained, distill={"enabled": True, "student_layers": [1],
                                                                         "hidden_loss": 0.1}))  # fmt: skip
    student = make_student(tiny_trained, 1, tmp_path / "layers-1")
    dcfg = distill_config(cfg, {}, [str(student.path)])
    storage = str(tmp_path / "journal")
    open_students_study(dcfg, storage, "s", [str(student.path)])
    outputs = teacher_outputs(teacher_dir=tiny_trained, train=splits[0], max_length=32, out_dir=tmp_path, hidden=True)
    built = []

    def objective(trial_cfg):  # noqa: ANN001, ANN202
        build = _objective(cfg, splits[0], outputs)(trial_cfg)
        built.append(build(torch.device("cpu")))
        return build

    role = TrialRole(name="student", model_kind="student-model", parent_kind="teacher-model", objective=objective)
    records = work_on_study(dcfg, storage, 0, splits, tmp_path / "work", role=role)
    assert [r.state for r in records] == ["COMPLETE"] and records[0].params["model.base"] == str(student.path)
    assert built and built[0].hidden and built[0].alpha == 0.5 and built[0].temperature == 2.0
    assert (tmp_path / "work" / "trials" / "trial-0000" / "best").is_dir()
    assert [r.number for r in trial_records(open_study(dcfg, storage, "s"))] == [0]


def test_check_refuses_a_student_as_deep_as_the_teacher_before_anything_trains(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from trainflow.app.check import check_model
    from trainflow.core.errors import ModelLoadError

    raw = tiny_config(tmp_path, tiny_model_dir, distill={"enabled": True, "student_layers": [1, 2, 3]})
    with pytest.raises(ModelLoadError) as err:
        check_model(parse_config_dict(raw))
    assert str(err.value) == (f"distill.student_layers: [2, 3] must be below the 2 layers of the teacher {tiny_model_dir};"
                              " list smaller depths")  # fmt: skip
    raw["distill"]["student_layers"] = [1]
    (report,) = check_model(parse_config_dict(raw))
    assert report.n_layers == 2
    # Each student base is checked too: it must load, and take texts as long as the teacher's.
    raw["distill"]["student_bases"] = [str(tmp_path / "missing"), str(tiny_model_dir)]
    raw["hpo"]["search_space"] = {"model.max_length": {"choices": [32, 512]}}
    with pytest.raises(ModelLoadError) as err:
        check_model(parse_config_dict(raw))
    lines = str(err.value).splitlines()
    assert any(line.startswith(f"distill.student_bases {str(tmp_path / 'missing')!r}: ") for line in lines)
    assert any(line.startswith(f"distill.student_bases {str(tiny_model_dir)!r}: its 128 positions are fewer than the"
                               " teacher's model.max_length 512") for line in lines)  # fmt: skip
