"""Every use of an Optuna name that is not public API, in one place.

Optuna's ask/tell interface has no public way to reach a study's storage, a trial's storage id,
the heartbeat hooks of a storage, or the lock of a journal file; trainflow needs each of them to
share one study between foreach workers with heartbeats (trainflow/search/heartbeat.py) and to
check a journal under the lock Optuna's writers take (trainflow/search/journal.py). They are
checked against the pinned Optuna (requirements.txt) by tests/trainflow/search/test_optuna_private.py;
a new Optuna release is taken only after that test passes with it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.storages.journal._file import JournalFileSymlinkLock, get_lock_file

__all__ = ["BaseHeartbeat", "heartbeat_enabled", "journal_lock", "retry_history", "storage_of", "trial_by_id",
           "trial_id"]  # fmt: skip


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes."""
    return study._storage


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its storage (not its number within the study)."""
    return int(trial._trial_id)


def trial_by_id(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """A live trial object for a RUNNING trial another process (or an earlier attempt) asked."""
    return optuna.Trial(study, trial_id)


def heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    """Whether the storage records heartbeats (RDBStorage with an interval, or ours)."""
    return bool(is_heartbeat_enabled(storage))


def journal_lock(path: Path) -> AbstractContextManager[Any]:
    """The lock Optuna's JournalFileBackend takes around every append to `path`."""
    return get_lock_file(JournalFileSymlinkLock(str(path)))


def retry_history(trial: optuna.Trial) -> list[int]:
    """The trials this one re-runs (set by RetryHeartbeatStaleTrialCallback); [] for a new trial."""
    attrs = trial.storage.get_trial_system_attrs(trial_id(trial))
    return list(attrs.get("retry_history", []))
