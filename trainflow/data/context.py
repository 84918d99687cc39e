"""Where a run keeps its files and its study: fixed in the flow's `start` and unchanged on resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainflow.data.dataset import Snapshot


@dataclass(frozen=True)
class RunContext:
    """The run's identity and places, passed from step to step (a Metaflow artifact)."""

    run_key: str
    run_dir: str
    storage: str
    study_name: str
    snapshot: Snapshot
    started_at: float

    @property
    def path(self) -> Path:
        return Path(self.run_dir)
