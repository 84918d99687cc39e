"""The Optuna names trainflow uses that are not public API (trainflow/search/optuna_private.py),
checked against the installed Optuna, which must be the pinned one."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import optuna

from tests.tiny import ROOT
from trainflow.search import optuna_private as op
from trainflow.search.heartbeat import HeartbeatJournalStorage


def test_the_installed_optuna_is_the_pinned_one() -> None:
    pins = dict(line.split("==", 1) for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    assert metadata.version("optuna") == pins["optuna"]


def test_every_private_name_still_does_its_job(tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    storage = HeartbeatJournalStorage(journal, heartbeat_interval=5, grace_period=60)
    study = optuna.create_study(storage=storage, study_name="s")
    assert op.storage_of(study) is storage and op.heartbeat_enabled(storage)
    trial = study.ask()
    again = op.trial_by_id(study, op.trial_id(trial))
    assert again.number == trial.number and op.retry_history(again) == []
    with op.journal_lock(journal):
        assert journal.is_file()
    plain = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    assert not op.heartbeat_enabled(op.storage_of(plain))
