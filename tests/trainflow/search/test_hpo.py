from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tests.search_helpers import work_on_study
from trainflow.core.config import parse_config_dict
from trainflow.core.errors import SearchError
from trainflow.search.study import best_trial, open_study, trial_records, worker_quota


def test_quota_splits_trials_exactly() -> None:
    assert [worker_quota(5, 2, w) for w in range(2)] == [3, 2]
    assert sum(worker_quota(7, 3, w) for w in range(3)) == 7


def test_workers_share_a_journal_study_and_run_exactly_n_trials(tmp_path, tiny_cfg, splits) -> None:
    tiny_cfg["hpo"].update(n_trials=3, n_workers=2)
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    ran0 = work_on_study(cfg, storage, 0, splits, tmp_path)
    ran1 = work_on_study(cfg, storage, 1, splits, tmp_path)
    assert [r.worker for r in ran0] == [0, 0] and [r.worker for r in ran1] == [1]
    # A second call of a finished worker (e.g. a retry after the task body ended) asks nothing new.
    assert work_on_study(cfg, storage, 1, splits, tmp_path) == []
    reloaded = optuna.load_study(study_name="s", storage=open_study(cfg, storage, "s")._storage)
    records = trial_records(reloaded)
    assert len(records) == 3
    assert {r.state for r in records} <= {"COMPLETE", "PRUNED"}
    best = best_trial(reloaded)
    assert Path(best.model_dir, "model.safetensors").is_file(), "best model is on disk, not only in memory"
    assert best.value == max(r.value for r in records if r.state == "COMPLETE")
    assert set(best.params) == {"train.learning_rate", "train.weight_decay", "train.warmup_ratio"}


def test_a_trial_left_running_is_continued_not_asked_again(tmp_path, tiny_cfg, splits) -> None:
    tiny_cfg["hpo"].update(n_trials=1, n_workers=1)
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    study = open_study(cfg, storage, "s")
    crashed = study.ask()  # an earlier attempt asked, suggested and died
    crashed.set_user_attr("worker", 0)
    space = cfg.hpo.search_space["train.learning_rate"]
    lr = crashed.suggest_float("train.learning_rate", space.low, space.high, log=True)
    ran = work_on_study(cfg, storage, 0, splits, tmp_path)
    assert [r.number for r in ran] == [crashed.number]
    assert ran[0].state == "COMPLETE" and ran[0].params["train.learning_rate"] == lr
    assert len(study.trials) == 1


def test_pruner_stops_a_trial_worse_than_the_median(tmp_path, tiny_cfg, splits) -> None:
    tiny_cfg["hpo"].update(n_trials=1, n_workers=1)
    tiny_cfg["train"].update(max_steps=6, eval_every=3)
    cfg = parse_config_dict(tiny_cfg)
    storage = str(tmp_path / "study.journal")
    study = open_study(cfg, storage, "s")
    # A finished trial whose every intermediate value is unbeatable (accuracy 1.0).
    study.add_trial(optuna.trial.create_trial(
        params={}, distributions={}, value=1.0, intermediate_values={3: 1.0, 6: 1.0},
        user_attrs={"worker": 99},
    ))  # fmt: skip
    ran = work_on_study(cfg, storage, 0, splits, tmp_path)
    assert ran[0].state == "PRUNED"


def test_sigusr1_and_sigterm_request_a_stop() -> None:
    import os
    import signal

    from trainflow.search.worker import stop_on_signals

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        before = signal.getsignal(sig)
        with stop_on_signals() as stop_requested:
            assert not stop_requested()
            os.kill(os.getpid(), sig)
            assert stop_requested()
        assert signal.getsignal(sig) is before, "handlers are restored"


def test_a_trial_that_reaches_its_last_step_completes_not_pruned(tmp_path, tiny_cfg) -> None:
    import optuna

    from trainflow.search.worker import report_and_prune

    cfg = parse_config_dict(tiny_cfg)
    study = open_study(cfg, str(tmp_path / "j.journal"), "s")
    first = study.ask()
    for step in (3, 6):
        first.report(0.9, step)
    study.tell(first, 0.9)
    worse = study.ask()
    report_and_prune(worse, "accuracy", 6, 0.1, max_steps=6)  # below the median, but the last step
    study.tell(worse, 0.1)
    assert study.trials[1].state == optuna.trial.TrialState.COMPLETE
    early = study.ask()
    with pytest.raises(optuna.TrialPruned, match="pruned at step 3"):
        report_and_prune(early, "accuracy", 3, 0.1, max_steps=6)


def test_a_study_without_a_complete_trial_is_a_one_line_search_error(tmp_path, tiny_cfg) -> None:
    cfg = parse_config_dict(tiny_cfg)
    study = open_study(cfg, str(tmp_path / "study.journal"), "s")
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    with pytest.raises(SearchError) as err:
        best_trial(study)
    message = str(err.value)
    assert "\n" not in message and "trial 0 PRUNED, trial 1 FAIL" in message and "hpo.n_trials" in message
