"""The Optuna journal file: checked when opened, repaired without deleting anything, and given
heartbeats measured against one clock.

Optuna's JournalFileBackend appends one JSON record per line under a lock file. A writer killed
mid-append (or a file server that lost the end of a write) leaves a torn last line; Optuna reads
past it, but the next append glues a new record onto it and from then on every `load_study`
fails (optuna/optuna#5138). `check_journal` runs under the same lock on every open:

- a torn tail (an unterminated or unparsable last line) is moved aside into
  `<journal>.corrupt-<time>` and the file truncated before it: the study continues, and the
  trial that record belonged to is continued by its worker or re-run after its heartbeat stops;
- an unparsable record with good records after it stops with `JournalCorruptError`, which gives
  its byte offset and the command that moves it and everything after it aside
  (`trainflow journal-repair JOURNAL --from-byte N`; nothing is deleted).

Heartbeats: `HeartbeatJournalStorage` touches `<journal>.heartbeats/<trial id>` on each beat. The
mtime of that file is set by the filesystem that holds it (on NFS: the server's clock), so a
beat's age is measured against a file the checker touches on the same filesystem, never against
the checker's own clock: clock skew between hosts cannot fail a live trial.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import JournalFileSymlinkLock, get_lock_file
from optuna.trial import TrialState

from trainflow.core.errors import JournalCorruptError
from trainflow.core.io import atomic_write_bytes, fsync_file

log = logging.getLogger(__name__)

CORRUPT_SUFFIX = ".corrupt-"
CLOCK_FILE = ".clock"


def _first_bad_record(data: bytes) -> tuple[int, int] | None:
    """(byte offset, line number) of the first line that is unterminated or not JSON, or None."""
    offset = 0
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        if not line.endswith(b"\n"):
            return offset, number
        try:
            json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return offset, number
        offset += len(line)
    return None


def _move_aside(path: Path, offset: int, data: bytes) -> Path:
    aside = path.with_name(f"{path.name}{CORRUPT_SUFFIX}{datetime.now(UTC):%Y%m%dT%H%M%S%f}")
    atomic_write_bytes(aside, data[offset:])
    os.truncate(path, offset)
    fsync_file(path)
    return aside


def check_journal(path: Path) -> Path | None:
    """Check the journal under its lock; move a torn tail aside (returned), or raise.

    Raises:
        JournalCorruptError: an unparsable record with good records after it.
    """
    if not path.is_file():
        return None
    with get_lock_file(JournalFileSymlinkLock(str(path))):
        data = path.read_bytes()
        bad = _first_bad_record(data)
        if bad is None:
            return None
        offset, line = bad
        if data.find(b"\n", offset) in (-1, len(data) - 1):  # the last line: a torn tail
            aside = _move_aside(path, offset, data)
            log.warning("journal %s: the last record (byte %d, line %d) was torn; moved its %d bytes to %s and"
                        " continued", path, offset, line, len(data) - offset, aside)  # fmt: skip
            return aside
    following = data.count(b"\n", offset) - 1
    raise JournalCorruptError(
        f"Optuna journal {path}: record {line} at byte {offset} is corrupt and {following}"
        f" record(s) follow it, so the study cannot be read. To continue without it and the records after it"
        f" (moved aside, not deleted; their trials are run again): trainflow journal-repair {path} --from-byte {offset}"
    )


def repair_journal(path: Path, from_byte: int) -> Path:
    """Move the records from `from_byte` (a record boundary) to the end into a `.corrupt-*` file
    beside the journal, under its lock; return that file."""
    with get_lock_file(JournalFileSymlinkLock(str(path))):
        data = path.read_bytes()
        if not 0 <= from_byte < len(data) or (from_byte > 0 and data[from_byte - 1 : from_byte] != b"\n"):
            raise JournalCorruptError(f"{path}: byte {from_byte} is not the start of a record (file has {len(data)})")
        return _move_aside(path, from_byte, data)


class HeartbeatJournalStorage(optuna.storages.JournalStorage, optuna.storages._heartbeat.BaseHeartbeat):
    """A journal-file study with heartbeats (see the module docstring). A RUNNING trial is stale
    when its beat file is older than `grace_period` seconds by the filesystem's clock; a trial
    with no beat file yet gets one the first time a checker sees it (its grace period starts
    then), so a worker killed between ask and first beat is still found."""

    def __init__(
        self,
        path: Path,
        *,
        heartbeat_interval: int,
        grace_period: int,
        stale_trial_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    ) -> None:
        check_journal(path)
        super().__init__(JournalFileBackend(str(path)))
        self._beats = path.with_name(path.name + ".heartbeats")
        self._beats.mkdir(exist_ok=True)
        self._interval = heartbeat_interval
        self._grace = grace_period
        self._callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        beat = self._beats / str(trial_id)
        beat.touch()
        os.utime(beat)

    def filesystem_now(self) -> float:
        """The current time by the clock of the filesystem that holds the beats."""
        clock = self._beats / CLOCK_FILE
        clock.touch()
        os.utime(clock)
        return clock.stat().st_mtime

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = self.filesystem_now()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = self._beats / str(t._trial_id)
            if not beat.exists():
                self.record_heartbeat(t._trial_id)  # first seen: its grace period starts now
                continue
            if now - beat.stat().st_mtime > self._grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None:
        return self._callback


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    """A checked journal study storage without heartbeats."""
    check_journal(path)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
