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

The journal's heartbeats are in trainflow/search/heartbeat.py.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend

from trainflow.core.errors import JournalCorruptError
from trainflow.core.io import atomic_write_bytes, fsync_file
from trainflow.search.optuna_private import journal_lock

log = logging.getLogger(__name__)

CORRUPT_SUFFIX = ".corrupt-"


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
    with journal_lock(path):
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
    with journal_lock(path):
        data = path.read_bytes()
        if not 0 <= from_byte < len(data) or (from_byte > 0 and data[from_byte - 1 : from_byte] != b"\n"):
            raise JournalCorruptError(f"{path}: byte {from_byte} is not the start of a record (file has {len(data)})")
        return _move_aside(path, from_byte, data)


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    """A checked journal study storage without heartbeats."""
    check_journal(path)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
