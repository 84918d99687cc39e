"""The declared search space, every sampler, pruner and budget, through real studies (journal
files) and real workers training the tiny model."""

from __future__ import annotations

import time

import optuna
import pytest

from tests.search_helpers import work_on_study
from trainflow.core.config import parse_config_dict
from trainflow.core.errors import ConfigError
from trainflow.search import space as search_space
from trainflow.search.study import (
    STARTED_ATTR,
    best_trial,
    budget_stop_reason,
    make_pruner,
    open_study,
    pareto_front,
    stopped_reason,
    trial_records,
)


def _problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_dict(raw)
    return info.value.problems


# --- the declared space -----------------------------------------------------------------------


def test_the_old_three_ranges_keep_their_meaning(tiny_cfg) -> None:
    tiny_cfg["hpo"]["search_space"] = {"learning_rate": [1e-5, 1e-3], "weight_decay": [0.0, 0.2],
                                       "warmup_ratio": [0.0, 0.3]}  # fmt: skip
    space = parse_config_dict(tiny_cfg).hpo.search_space
    assert set(space) == {"train.learning_rate", "train.weight_decay", "train.warmup_ratio"}
    lr = space["train.learning_rate"]
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-3, True)
    assert not space["train.weight_decay"].log and space["train.warmup_ratio"].high == 0.3


def test_the_default_space_is_the_old_default(tiny_cfg) -> None:
    space = parse_config_dict(tiny_cfg).hpo.search_space
    assert {k: (v.low, v.high, v.log) for k, v in space.items()} == {
        "train.learning_rate": (2e-5, 3e-4, True), "train.weight_decay": (0.0, 0.1, False),
        "train.warmup_ratio": (0.0, 0.2, False),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("space", "fragment"),
    [
        ({"train.epochs": {"low": 1, "high": 3}}, "hpo.search_space.train.epochs: not a field the search can set"),
        ({"train.warmup_ratio": {"low": 0.0, "high": 1.5}}, "hpo.search_space.train.warmup_ratio: 1.5 is not a valid"),
        ({"train.batch_size": {"low": 0, "high": 16}}, "hpo.search_space.train.batch_size: 0 is not a valid"),
        ({"train.batch_size": {"low": 4.5, "high": 16}}, "train.batch_size is an integer"),
        ({"model.base": {"choices": []}}, "choices is empty"),
        ({"train.learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "log: true needs low > 0"),
        ({"train.dropout": {"low": 0.3, "high": 0.1}}, "low 0.3 is above high 0.1"),
        ({"model.base": {"low": 1, "high": 2}}, "model.base is not a number; list its values as choices"),
        ({"train.label_smoothing": {"choices": [0.0, 1.5]}}, "1.5 is not a valid train.label_smoothing"),
    ],
)
def test_check_refuses_a_bad_search_space_naming_the_key(tiny_cfg, space, fragment) -> None:
    tiny_cfg["hpo"]["search_space"] = space
    problems = _problems(tiny_cfg)
    assert any(fragment in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_grid_takes_choices_and_integer_ranges_only(tiny_cfg) -> None:
    tiny_cfg["hpo"].update(sampler="grid", search_space={"train.learning_rate": {"low": 1e-4, "high": 1e-3}})
    assert any("the grid sampler takes choices and integer ranges" in p for p in _problems(tiny_cfg))
    tiny_cfg["hpo"]["search_space"] = {"train.batch_size": {"low": 4, "high": 8, "step": 4},
                                       "train.learning_rate": {"choices": [1e-4, 1e-3]}}  # fmt: skip
    cfg = parse_config_dict(tiny_cfg)
    assert search_space.grid(cfg) == {"train.batch_size": [4, 8], "train.learning_rate": [1e-4, 1e-3]}
    assert search_space.grid_size(cfg) == 4


def test_search_checks_name_the_field_and_the_fix(tiny_cfg) -> None:
    tiny_cfg["hpo"].update(pruner={"type": "successive_halving", "min_resource": 50}, constraints={"threads": 1})
    tiny_cfg["task"] = {"type": "ordinal", "labels": ["low", "mid", "high"]}
    tiny_cfg["hpo"]["metric"] = "mae"
    tiny_cfg["train"]["label_smoothing"] = 0.1
    problems = _problems(tiny_cfg)
    assert any(p.startswith("hpo.pruner.min_resource: 50 steps exceed train.max_steps 6") for p in problems)
    assert any(p.startswith("hpo.constraints: set max_latency_ms, max_size_mb") for p in problems)
    assert any(p.startswith("train.label_smoothing: a ordinal task's loss has no classes") for p in problems)


def test_a_trial_config_sets_the_searched_fields_and_keeps_the_rest(tiny_cfg) -> None:
    tiny_cfg["hpo"]["search_space"] = {
        "train.batch_size": {"low": 4, "high": 16, "step": 4}, "train.dropout": {"low": 0.0, "high": 0.3},
        "model.max_length": {"choices": [16, 32]}, "train.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
    }  # fmt: skip
    cfg = parse_config_dict(tiny_cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        t_cfg = search_space.trial_config(trial, cfg)
        assert isinstance(t_cfg.train.batch_size, int) and t_cfg.train.batch_size in (4, 8, 12, 16)
        assert t_cfg.model.max_length in (16, 32) and 0.0 <= t_cfg.train.dropout <= 0.3
        assert t_cfg.train.max_steps == cfg.train.max_steps and t_cfg.model.base == cfg.model.base
        assert set(trial.params) == set(cfg.hpo.search_space)
        hp = search_space.hyperparams(t_cfg)
        assert (hp.batch_size, hp.learning_rate) == (t_cfg.train.batch_size, t_cfg.train.learning_rate)
        study.tell(trial, 0.5)


def test_misfit_names_why_an_earlier_trial_does_not_fit(tiny_cfg) -> None:
    cfg = parse_config_dict(tiny_cfg)
    inside = {"train.learning_rate": 1e-4, "train.weight_decay": 0.05, "train.warmup_ratio": 0.1}
    assert search_space.misfit(cfg, inside) is None
    assert "outside this search space" in search_space.misfit(cfg, {**inside, "train.learning_rate": 0.5})
    assert "has no value for train.warmup_ratio" in search_space.misfit(cfg, {k: v for k, v in inside.items()
                                                                              if k != "train.warmup_ratio"})  # fmt: skip
    assert "set train.batch_size" in search_space.misfit(cfg, {**inside, "train.batch_size": 8})


# --- samplers ----------------------------------------------------------------------------------

SPACES = {
    "tpe": {"train.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "train.batch_size": {"choices": [4, 8]}},
    "random": {"train.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "train.dropout": {"low": 0, "high": 0.2}},
    "cmaes": {"train.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "train.warmup_ratio": {"low": 0, "high": 0.3}},
    "gp": {"train.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "train.weight_decay": {"low": 0, "high": 0.1}},
    "grid": {"train.batch_size": {"choices": [4, 8]}, "train.learning_rate": {"choices": [1e-4, 5e-4]}},
}  # fmt: skip


@pytest.mark.parametrize("sampler", list(SPACES))
def test_every_sampler_runs_real_trials_from_the_shared_study(tmp_path, tiny_cfg, splits, sampler) -> None:
    n = 5 if sampler == "grid" else 3  # the grid has 4 points: the search stops when each was tried
    tiny_cfg["hpo"].update(sampler=sampler, n_trials=n, n_workers=1, pruner="none", search_space=SPACES[sampler])
    tiny_cfg["train"].update(max_steps=2, eval_every=2, checkpoint_every=2)
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    ran = work_on_study(cfg, storage, 0, splits, tmp_path)
    study = open_study(cfg, storage, "s")
    kinds = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler, "gp": optuna.samplers.GPSampler,
             "cmaes": optuna.samplers.CmaEsSampler, "grid": optuna.samplers.GridSampler}  # fmt: skip
    assert isinstance(study.sampler, kinds[sampler])
    assert all(r.state == "COMPLETE" for r in ran) and all(set(r.params) == set(SPACES[sampler]) for r in ran)
    for r in ran:
        assert 1e-5 <= r.params["train.learning_rate"] <= 1e-3
    if sampler == "grid":
        points = {(r.params["train.batch_size"], r.params["train.learning_rate"]) for r in ran}
        assert len(ran) == 4 and len(points) == 4, "each grid point once, then the search stops"
        assert "every one of the grid's 4 points was tried" in stopped_reason(study)
    else:
        assert len(ran) == 3 and len({r.params["train.learning_rate"] for r in ran}) == 3


def test_the_sampler_is_seeded(tmp_path, tiny_cfg) -> None:
    tiny_cfg["hpo"].update(sampler="random", search_space=SPACES["random"])
    cfg = parse_config_dict(tiny_cfg)
    draws = []
    for name in ("a", "b"):
        study = open_study(cfg, str(tmp_path / f"{name}.journal"), name)
        draws.append([search_space.sample(study.ask(), cfg) for _ in range(3)])
    assert draws[0] == draws[1]


# --- pruners -----------------------------------------------------------------------------------


def _plant_strong_trials(study: optuna.Study, n: int, steps=(3, 6)) -> None:
    """Finished trials whose every intermediate value is unbeatable (accuracy 1.0), at every rung."""
    for _ in range(n):
        study.add_trial(optuna.trial.create_trial(
            params={}, distributions={}, value=1.0, intermediate_values=dict.fromkeys(steps, 1.0),
            user_attrs={"worker": 99}, system_attrs={"completed_rung_0": 1.0},
        ))  # fmt: skip


PRUNERS = {
    "median": "median",
    "percentile": {"type": "percentile", "percentile": 50},
    "successive_halving": {"type": "successive_halving", "min_resource": 3, "reduction_factor": 3},
    "hyperband": {"type": "hyperband", "min_resource": 3, "reduction_factor": 3},
}


@pytest.mark.parametrize("name", list(PRUNERS))
def test_every_pruner_stops_a_weaker_trial_at_an_evaluation(tmp_path, tiny_cfg, splits, name) -> None:
    tiny_cfg["hpo"].update(n_trials=1, n_workers=1, pruner=PRUNERS[name])
    tiny_cfg["train"].update(max_steps=6, eval_every=3)
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    study = open_study(cfg, storage, "s")
    assert type(make_pruner(cfg)).__name__.lower().startswith(name.replace("_", ""))
    _plant_strong_trials(study, 3)
    ran = work_on_study(cfg, storage, 0, splits, tmp_path)
    assert [r.state for r in ran] == ["PRUNED"], ran
    (trial,) = [t for t in open_study(cfg, storage, "s").trials if t.user_attrs.get("worker") == 0]
    assert max(trial.intermediate_values) == 3, "pruned at its first evaluation, not trained to the end"


@pytest.mark.parametrize("name", list(PRUNERS))
def test_a_trial_that_reaches_its_last_step_completes_under_every_pruner(tmp_path, tiny_cfg, splits, name) -> None:
    tiny_cfg["hpo"].update(n_trials=1, n_workers=1, pruner=PRUNERS[name])
    tiny_cfg["train"].update(max_steps=3, eval_every=3)  # its only evaluation is its last step
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    _plant_strong_trials(open_study(cfg, storage, "s"), 3, steps=(3,))
    assert [r.state for r in work_on_study(cfg, storage, 0, splits, tmp_path)] == ["COMPLETE"]


def test_successive_halving_judges_across_workers_through_the_study(tmp_path, tiny_cfg, splits) -> None:
    """Two workers, one study: the second worker's trials are judged against the first's rungs."""
    tiny_cfg["hpo"].update(n_trials=4, n_workers=2, pruner=PRUNERS["successive_halving"])
    tiny_cfg["train"].update(max_steps=9, eval_every=3, checkpoint_every=9)
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    work_on_study(cfg, storage, 0, splits, tmp_path)
    work_on_study(cfg, storage, 1, splits, tmp_path)
    trials = open_study(cfg, storage, "s").trials
    assert len(trials) == 4 and all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                                    for t in trials)  # fmt: skip
    # Every trial that passed step 3 recorded its rung in the shared study.
    assert all("completed_rung_0" in t.system_attrs for t in trials)


# --- budgets -----------------------------------------------------------------------------------


def test_a_time_budget_stops_asking_and_lets_the_running_trial_finish(tmp_path, tiny_cfg, splits) -> None:
    tiny_cfg["hpo"].update(n_trials=3, n_workers=1, pruner="none", budget={"timeout_minutes": 0.001})
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    ran = work_on_study(cfg, storage, 0, splits, tmp_path)
    assert [r.state for r in ran] == ["COMPLETE"], "the trial that started finished; no other started"
    study = open_study(cfg, storage, "s")
    assert "time budget of 0.001 min" in stopped_reason(study)
    # A second worker honours the same budget through the study.
    cfg2 = parse_config_dict({**tiny_cfg, "hpo": {**tiny_cfg["hpo"], "n_workers": 2}})
    assert work_on_study(cfg2, storage, 1, splits, tmp_path) == []


def test_a_target_stops_the_search_once_a_trial_reaches_it(tmp_path, tiny_cfg, splits) -> None:
    tiny_cfg["hpo"].update(n_trials=3, n_workers=1, pruner="none", budget={"target": 0.0})
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    ran = work_on_study(cfg, storage, 0, splits, tmp_path)
    assert len(ran) == 1
    assert stopped_reason(open_study(cfg, storage, "s")) == (
        f"trial {ran[0].number} reached the target accuracy 0 (hpo.budget.target)"
    )


def test_patience_stops_after_trials_without_improvement(tmp_path, tiny_cfg, splits) -> None:
    tiny_cfg["hpo"].update(n_trials=3, n_workers=1, budget={"patience": 2})
    cfg = parse_config_dict(tiny_cfg)
    study = open_study(cfg, str(tmp_path / "study.journal"), "s")
    for value in (0.9, 0.7):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))
    assert budget_stop_reason(study, cfg) is None
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.8))
    assert (
        budget_stop_reason(study, cfg) == "2 completed trials in a row did not improve on 0.9000 (hpo.budget.patience)"
    )
    assert work_on_study(cfg, str(tmp_path / "study.journal"), 0, splits, tmp_path) == []


def test_the_time_budget_counts_from_the_first_trial_asked(tmp_path, tiny_cfg) -> None:
    tiny_cfg["hpo"]["budget"] = {"timeout_minutes": 1}
    cfg = parse_config_dict(tiny_cfg)
    study = open_study(cfg, str(tmp_path / "study.journal"), "s")
    assert budget_stop_reason(study, cfg) is None
    study.set_user_attr(STARTED_ATTR, time.time() - 61)
    assert "time budget of 1 min" in budget_stop_reason(study, cfg)


# --- the best among feasible trials -------------------------------------------------------------


def _trial(study, value, latency, size, feasible):
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value, user_attrs={
        "latency_ms": latency, "size_mb": size, "feasible": feasible}))  # fmt: skip


def test_the_best_is_chosen_among_feasible_trials_and_the_pareto_front(tmp_path, tiny_cfg) -> None:
    cfg = parse_config_dict(tiny_cfg)
    study = open_study(cfg, str(tmp_path / "study.journal"), "s")
    _trial(study, 0.9, 9.0, 5.0, False)  # the most accurate is too slow
    _trial(study, 0.8, 2.0, 1.0, True)
    _trial(study, 0.7, 1.0, 1.0, True)
    _trial(study, 0.6, 3.0, 1.0, True)  # dominated: slower and worse than trial 1
    assert best_trial(study).number == 1
    assert [r.number for r in pareto_front(trial_records(study), "maximize")] == [2, 1, 0]


def test_no_feasible_trial_names_the_fastest(tmp_path, tiny_cfg) -> None:
    from trainflow.core.errors import SearchError

    cfg = parse_config_dict(tiny_cfg)
    study = open_study(cfg, str(tmp_path / "study.journal"), "s")
    _trial(study, 0.9, 9.0, 5.0, False)
    _trial(study, 0.8, 4.5, 3.0, False)
    with pytest.raises(SearchError) as info:
        best_trial(study)
    assert "(2 over them): the fastest, trial 1, runs its INT8 model in 4.50 ms and takes 3.0 MB" in str(info.value)
    assert "\n" not in str(info.value)
