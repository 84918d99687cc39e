"""What the search tests share: a small labelled split and one worker's run of the study "s"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.tiny import rt_texts
from trainflow.data.dataset import SplitData


def small_splits() -> tuple[SplitData, SplitData]:
    """60 training and 20 validation rows of real text, labels alternating."""
    texts = rt_texts(80)
    labels = [i % 2 for i in range(80)]
    return (SplitData([str(i) for i in range(60)], texts[:60], labels[:60]),
            SplitData([str(i) for i in range(60, 80)], texts[60:], labels[60:]))  # fmt: skip


def work_on_study(cfg: Any, storage: str, worker: int, splits: tuple[SplitData, SplitData], work: Path, **kw: Any):
    """`run_worker` for worker `worker` of study "s" on `splits`; the records of the trials it ran."""
    from trainflow.search.worker import run_worker

    train, val = splits
    return run_worker(cfg=cfg, storage=storage, study_name="s", worker=worker, train=train, validation=val,
                      work_dir=work, group="g", **kw)  # fmt: skip
