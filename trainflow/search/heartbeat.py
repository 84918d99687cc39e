"""Heartbeats of running trials: the beating thread and a journal storage that records beats.

A running trial beats every `hpo.heartbeat_interval` seconds from a thread (`heartbeat`); any
worker about to ask a trial first fails the RUNNING trials silent for longer than
`hpo.heartbeat_grace_period` (trainflow/search/worker.py), and Optuna re-queues each one.

Optuna 5's JournalStorage has no heartbeat (only RDBStorage implements Optuna's heartbeat
protocol; upstream request https://github.com/optuna/optuna/issues/6615, its PR #6622 was
closed), so `HeartbeatJournalStorage` adds one: it touches `<journal>.heartbeats/<trial id>` on
each beat. The mtime of that file is set by the filesystem that holds it (on NFS: the server's
clock), so a beat's age is measured against a file the checker touches on the same filesystem,
never against the checker's own clock: clock skew between hosts cannot fail a live trial.
RDB URLs get RDBStorage's own heartbeat.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from trainflow.search.journal import check_journal
from trainflow.search.optuna_private import BaseHeartbeat, heartbeat_enabled, storage_of, trial_id

log = logging.getLogger(__name__)

CLOCK_FILE = ".clock"
# A beat that fails is retried this often per interval before the thread logs and waits again.
BEAT_RETRIES = 3


class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
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

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:  # Optuna's heartbeat protocol names it
        now = self.filesystem_now()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = self._beats / str(trial_id(t))
            if not beat.exists():
                self.record_heartbeat(trial_id(t))  # first seen: its grace period starts now
                continue
            if now - beat.stat().st_mtime > self._grace:
                stale.append(trial_id(t))
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None:
        return self._callback


def beat(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial) -> None:
    """Record one heartbeat of `trial` now (nothing when the storage has no heartbeats)."""
    storage = storage_of(study)
    if heartbeat_enabled(storage):
        storage.record_heartbeat(trial_id(trial))  # type: ignore[attr-defined]


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, grace_period: float) -> Iterator[Callable[[], bool]]:
    """Beat every `heartbeat_interval` seconds in a thread while the trial runs; yield `lost()`,
    true once no beat has succeeded for half the grace period (then the trial must stop itself,
    checkpointed, before other workers fail it as stale). A failing beat (an OSError of the
    shared filesystem, a database hiccup) is retried and logged, never fatal to the thread.
    Without heartbeats: a no-op whose `lost()` is always false."""
    storage = storage_of(study)
    if not heartbeat_enabled(storage):
        yield lambda: False
        return
    interval = storage.get_heartbeat_interval()  # type: ignore[attr-defined]
    stop, lost = threading.Event(), threading.Event()
    last_ok = [time.monotonic()]

    def beat_once() -> None:
        for attempt in range(1, BEAT_RETRIES + 1):
            try:
                storage.record_heartbeat(trial_id(trial))  # type: ignore[attr-defined]
            except Exception as err:  # noqa: BLE001 - any storage error: retried, then reported below
                log.warning("trial %d: heartbeat failed (attempt %d of %d): %s", trial.number, attempt, BEAT_RETRIES,
                            err)  # fmt: skip
                if stop.wait(min(1.0, interval / BEAT_RETRIES)):
                    return
                continue
            last_ok[0] = time.monotonic()
            return
        if time.monotonic() - last_ok[0] > grace_period / 2 and not lost.is_set():
            log.error("trial %d: no heartbeat for %.0f s (half the %d s grace period): stopping the trial with a"
                      " checkpoint before other workers fail it as stale", trial.number,
                      time.monotonic() - last_ok[0], grace_period)  # fmt: skip
            lost.set()

    def beat_forever() -> None:
        while not stop.wait(interval):
            beat_once()

    beat_once()
    thread = threading.Thread(target=beat_forever, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield lost.is_set
    finally:
        stop.set()
        thread.join()
