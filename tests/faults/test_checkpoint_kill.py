"""A kill after every filesystem operation of a checkpoint save loses at most one checkpoint
interval (issue 11, point 9): a forked child writes checkpoint 2 over an intact checkpoint 1 and
is killed (os._exit) right after its N-th filesystem call, for every N until the save completes;
each time the reader finds checkpoint 1 or 2, intact. Also: meta.json must list exactly the
expected plain file names."""

from __future__ import annotations

import builtins
import io
import json
import os
from pathlib import Path

import pytest
import torch

from trainflow.core.layout import CHECKPOINT_META as META_FILE
from trainflow.core.layout import TRAINER_STATE as STATE_FILE
from trainflow.core.layout import WEIGHTS as WEIGHTS_FILE
from trainflow.core.layout import step_version
from trainflow.training.checkpoints import CheckpointWriter
from trainflow.training.resume import read_checkpoint_meta

OPS = ("rename", "replace", "fsync", "mkdir", "unlink", "rmdir", "truncate", "utime", "symlink")


def _state():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _save(root: Path, step: int) -> None:
    model, opt, sched = _state()
    CheckpointWriter(asynchronous=False).save(root, model=model, optimizer=opt, scheduler=sched, step=step, extra={})


def _save_killed_after(root: Path, n: int) -> int:
    """Fork; the child saves step 2, exiting right after its n-th filesystem call. Returns the
    child's exit status (0: the save completed before the n-th call)."""
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    count = [0]

    def counted(real):
        def call(*args, **kwargs):
            result = real(*args, **kwargs)
            count[0] += 1
            if count[0] >= n:
                os._exit(9)  # like kill -9: no cleanup, no flush of Python buffers
            return result

        return call

    for name in OPS:
        setattr(os, name, counted(getattr(os, name)))
    real_open = io.open

    def opened(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+"):
            count[0] += 1
            if count[0] >= n:
                os._exit(9)
        return fh

    builtins.open = io.open = opened  # type: ignore[assignment]
    try:
        _save(root, 2)
    finally:
        os._exit(0)


def test_a_kill_after_any_filesystem_operation_of_a_save_leaves_an_intact_checkpoint(tmp_path: Path) -> None:
    seen = set()
    for n in range(1, 200):
        root = tmp_path / f"kill-{n}" / "checkpoint"
        _save(root, 1)
        status = _save_killed_after(root, n)
        meta = read_checkpoint_meta(root)
        assert meta is not None, f"killed after filesystem call {n}: no intact checkpoint left"
        assert meta["step"] in (1, 2)
        seen.add(meta["step"])
        if status == 0:
            break
    else:
        pytest.fail("the save never completed")
    print(f"\nsave of checkpoint 2: {n - 1} filesystem operations, killed after each of them")
    assert n > 5, "the save does several filesystem operations"
    assert seen == {1, 2}, "early kills keep checkpoint 1, late ones already have checkpoint 2"


@pytest.mark.parametrize(
    "files",
    [{}, [], {"../x": "0" * 64, WEIGHTS_FILE: "0" * 64}, {WEIGHTS_FILE: "0" * 64}, {WEIGHTS_FILE: 1, STATE_FILE: 2}],
)
def test_a_meta_json_that_lists_other_files_is_skipped(tmp_path: Path, files, caplog) -> None:
    root = tmp_path / "checkpoint"
    _save(root, 1)
    folder = root / step_version(1)
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "files": files}))
    assert read_checkpoint_meta(root) is None
    assert "ignoring this checkpoint" in caplog.text


def test_a_meta_json_that_is_a_list_is_skipped(tmp_path: Path, caplog) -> None:
    root = tmp_path / "checkpoint"
    _save(root, 1)
    (root / step_version(1) / META_FILE).write_text("[1, 2]")
    assert read_checkpoint_meta(root) is None
