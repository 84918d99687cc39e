"""Checkpoints written by a background thread: the snapshot is isolated from training that goes
on, the files match their recorded SHA-256, errors surface, and an asynchronously checkpointed
run resumes exactly like a synchronous one."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import final_weights
from tests.trainflow.training.test_train import _train, splits  # noqa: F401 (fixture)
from trainflow.core.config import parse_config_dict
from trainflow.core.layout import WEIGHTS as WEIGHTS_FILE
from trainflow.core.layout import step_version
from trainflow.training.checkpoints import CheckpointWriter
from trainflow.training.resume import read_checkpoint_meta


def _tiny_state() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def test_snapshot_is_isolated_from_training_that_goes_on(tmp_path: Path) -> None:
    model, opt, sched = _tiny_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    written = threading.Event()
    release = threading.Event()

    def on_written(folder: Path) -> None:
        written.set()

    writer = CheckpointWriter(asynchronous=True, on_written=on_written)
    history = [{"step": 1}]
    # Hold the writer thread until training has moved on.
    writer._pool.submit(release.wait)  # type: ignore[union-attr]
    writer.save(tmp_path / "ckpt", model=model, optimizer=opt, scheduler=sched, step=1, extra={"history": history})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(100.0)  # the next optimizer steps, in place
    history.append({"step": 2})
    assert not written.is_set()
    release.set()
    writer.close()
    assert written.is_set()
    meta = read_checkpoint_meta(tmp_path / "ckpt")
    assert meta is not None, "files match the SHA-256 hashed while writing"
    assert meta["step"] == 1 and meta["history"] == [{"step": 1}]
    saved = load_file(str(tmp_path / "ckpt" / step_version(1) / WEIGHTS_FILE))
    for k, v in before.items():
        assert torch.equal(saved[k], v), k


def test_an_error_in_a_background_write_is_raised_by_wait(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, opt, sched = _tiny_state()

    def broken(folder: Path) -> None:
        raise OSError("datastore unreachable")

    writer = CheckpointWriter(asynchronous=True, on_written=broken)
    writer.save(tmp_path / "ckpt", model=model, optimizer=opt, scheduler=sched, step=1, extra={})
    with pytest.raises(OSError, match="datastore unreachable"):
        writer.wait()
    writer.save(tmp_path / "ckpt", model=model, optimizer=opt, scheduler=sched, step=2, extra={})
    with caplog.at_level(logging.ERROR, logger="trainflow.training.checkpoints"):
        writer.close(quiet=True)  # while another exception propagates: logged, not raised
    assert "writing the last checkpoint failed" in caplog.text
    assert read_checkpoint_meta(tmp_path / "ckpt")["step"] == 2  # the folder itself was complete


def test_async_checkpoints_resume_exactly_like_synchronous_ones(tmp_path, tiny_cfg, splits) -> None:  # noqa: F811
    tiny_cfg["train"].update(eval_every=4, checkpoint_every=2)
    sync_cfg = parse_config_dict(tiny_cfg)
    tiny_cfg["train"]["async_checkpoint"] = "on"
    async_cfg = parse_config_dict(tiny_cfg)
    full = _train(sync_cfg, splits, tmp_path / "full")
    threads: list[str] = []
    saved: list[int] = []

    def on_checkpoint(folder: Path) -> None:
        threads.append(threading.current_thread().name)
        saved.append(read_checkpoint_meta(folder)["step"])

    _train(async_cfg, splits, tmp_path / "part", stop_after_step=7, on_checkpoint=on_checkpoint)
    assert saved == [2, 4, 6], "every checkpoint written, in order, complete when on_checkpoint runs"
    assert all(name.startswith("checkpoint") for name in threads), threads
    resumed = _train(async_cfg, splits, tmp_path / "part", resume_dir=tmp_path / "part" / "checkpoint")
    assert resumed.resumed_from_step == 6
    assert resumed.history == full.history
    a, b = final_weights(tmp_path / "full" / "best"), final_weights(tmp_path / "part" / "best")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0


def test_checkpoint_min_seconds_skips_step_checkpoints_but_not_a_stop_request(tmp_path, tiny_cfg, splits) -> None:  # noqa: F811
    from trainflow.core.errors import TrainingInterrupted

    tiny_cfg["train"].update(eval_every=4, checkpoint_every=2, checkpoint_min_seconds=3600)
    cfg = parse_config_dict(tiny_cfg)
    saved: list[int] = []
    steps = iter(range(100))
    with pytest.raises(TrainingInterrupted):
        _train(cfg, splits, tmp_path / "run", on_checkpoint=lambda f: saved.append(read_checkpoint_meta(f)["step"]),
               stop_requested=lambda: next(steps) >= 4)  # fmt: skip
    assert saved == [5], "the due checkpoints at steps 2 and 4 came within the hour; the stop request saves at once"


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, caplog) -> None:
    model, opt, sched = _tiny_state()
    writer = CheckpointWriter(asynchronous=False)
    for step in (1, 2):
        writer.save(tmp_path / "ckpt", model=model, optimizer=opt, scheduler=sched, step=step, extra={})
    newest = tmp_path / "ckpt" / step_version(2) / WEIGHTS_FILE
    newest.write_bytes(newest.read_bytes()[:50])
    with caplog.at_level(logging.WARNING):
        meta = read_checkpoint_meta(tmp_path / "ckpt")
    assert meta is not None and meta["step"] == 1
    assert "model.safetensors is missing or corrupt" in caplog.text
