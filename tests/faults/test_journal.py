"""The Optuna journal and its heartbeats under damage and clock skew (issue 11, points 7 and 8)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from trainflow.app.cli import main as cli
from trainflow.core.config import parse_config_dict
from trainflow.core.errors import JournalCorruptError
from trainflow.search.heartbeat import HeartbeatJournalStorage, heartbeat
from trainflow.search.journal import CORRUPT_SUFFIX
from trainflow.search.study import open_storage, open_study


def _study_with_trials(cfg, journal: Path, n: int = 3) -> optuna.Study:
    study = open_study(cfg, str(journal), "s")
    for i in range(n):
        trial = study.ask()
        study.tell(trial, float(i))
    return study


@pytest.fixture
def cfg(tiny_cfg: dict):
    return parse_config_dict(tiny_cfg)


def test_a_torn_last_record_is_moved_aside_and_the_study_continues(tmp_path: Path, cfg, caplog) -> None:
    journal = tmp_path / "optuna.journal"
    _study_with_trials(cfg, journal)
    running = open_study(cfg, str(journal), "s").ask()  # this worker is killed while writing
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"op_code": 6, "worker_id": "x", "trial_id": ')  # torn mid-record
    with caplog.at_level(logging.WARNING, logger="trainflow.search.journal"):
        study = open_study(cfg, str(journal), "s")
    assert "was torn" in caplog.text
    (aside,) = tmp_path.glob(f"optuna.journal{CORRUPT_SUFFIX}*")
    assert aside.read_bytes().startswith(b'{"op_code": 6'), "the torn bytes are kept, not deleted"
    assert journal.read_bytes().startswith(good)
    assert study.trials[running.number].state == TrialState.RUNNING
    trial = study.ask()  # the next ask and tell work, and every later load
    study.tell(trial, 9.0)
    assert len(open_study(cfg, str(journal), "s").trials) == 5


def test_a_corrupt_middle_record_stops_with_its_offset_and_the_repair_command(tmp_path: Path, cfg, capsys) -> None:
    journal = tmp_path / "optuna.journal"
    _study_with_trials(cfg, journal)
    lines = journal.read_bytes().splitlines(keepends=True)
    offset = sum(len(line) for line in lines[:3])
    lines[3] = b'{"op_code": 4, "broken\n'
    journal.write_bytes(b"".join(lines))
    with pytest.raises(JournalCorruptError, match=rf"record 4 at byte {offset} is corrupt") as info:
        open_study(cfg, str(journal), "s")
    command = str(info.value).split("(moved aside, not deleted; their trials are run again): ")[1]
    assert command == f"trainflow journal-repair {journal} --from-byte {offset}"
    assert cli(command.split()[1:]) == 0
    study = open_study(cfg, str(journal), "s")  # readable again, up to the damage
    assert len(study.trials) >= 1
    assert list(tmp_path.glob(f"optuna.journal{CORRUPT_SUFFIX}*"))


def test_staleness_is_measured_by_the_filesystems_clock(tmp_path: Path, monkeypatch) -> None:
    """8. The checker's own clock 301 s ahead of the file server's: a live trial stays alive."""
    journal = tmp_path / "optuna.journal"
    storage = HeartbeatJournalStorage(journal, heartbeat_interval=1, grace_period=300)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 301)
    assert storage._get_stale_trial_ids(study._study_id) == []
    beat = tmp_path / "optuna.journal.heartbeats" / str(trial._trial_id)
    old = real_time() - 301
    os.utime(beat, (old, old))  # silent for 301 s by the server's clock: stale
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]


def test_a_heartbeat_that_keeps_failing_stops_its_own_trial(tmp_path: Path, cfg, monkeypatch, caplog) -> None:
    journal = tmp_path / "optuna.journal"
    storage = HeartbeatJournalStorage(journal, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = optuna.Trial(study, study.ask()._trial_id)
    calls = []

    def failing(trial_id: int) -> None:
        calls.append(trial_id)
        if len(calls) > 1:
            raise OSError("Stale file handle")

    monkeypatch.setattr(storage, "record_heartbeat", failing)
    with caplog.at_level(logging.WARNING, logger="trainflow.search.heartbeat"), heartbeat(study, trial, 2) as lost:
        deadline = time.monotonic() + 10
        while not lost() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lost(), "no beat for half the grace period: the trial must stop itself"
    assert "heartbeat failed (attempt 1 of 3): Stale file handle" in caplog.text
    assert "stopping the trial with a checkpoint" in caplog.text
    assert len(calls) > 3, "failed beats are retried; the thread never died"


def test_open_storage_checks_a_plain_journal_too(tmp_path: Path, cfg) -> None:
    journal = tmp_path / "j.journal"
    _study_with_trials(cfg, journal, n=1)
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"op_code"')
    optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    assert journal.read_bytes() == good


def test_a_journal_that_changes_under_a_running_worker_is_one_line_with_the_repair(tmp_path: Path) -> None:
    """Another process garbles a record in the middle while the worker runs; the worker's next read
    fails deep inside Optuna with a JSON error: the first failure already names the record's
    offset and the repair command (a retry would say the same when it opens the journal)."""
    import json as _json

    from trainflow.core.errors import JournalCorruptError
    from trainflow.search.worker import journal_read_errors

    journal = tmp_path / "optuna.journal"
    lines = [_json.dumps({"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}) + "\n"] * 3
    journal.write_text("".join(lines))
    data = journal.read_bytes()
    first = data.index(b"\n") + 1
    journal.write_bytes(data[:first] + b'{"op_code": 0, "wor' + b"\n" + data[first + len(lines[1]) :])
    with pytest.raises(JournalCorruptError) as err, journal_read_errors(str(journal)):
        _json.loads('{"op_code": 0, "wor')  # what Optuna's reader raises on that record
    message = str(err.value)
    assert f"record 2 at byte {first} is corrupt" in message
    assert f"trainflow journal-repair {journal} --from-byte {first}" in message
