"""A trial's hyperparameters and its CPU thread share: plain values, no torch, so the search can
name them without loading the training stack."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Hyperparams:
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    batch_size: int
    max_steps: int


def cpu_threads(requested: int, workers: int) -> int:
    """torch threads of one worker: `requested`, or the cores shared evenly among the workers."""
    return requested or max(1, (os.cpu_count() or 1) // workers)
