from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.tiny import final_weights, rt_texts
from trainflow.core.config import parse_config_dict
from trainflow.core.layout import step_version
from trainflow.data.dataset import SplitData
from trainflow.training.hparams import Hyperparams
from trainflow.training.resume import read_checkpoint_meta
from trainflow.training.train import batch_indices, train_model


@pytest.fixture(scope="module")
def splits() -> tuple[SplitData, SplitData]:
    texts = rt_texts(120)
    labels = [i % 2 for i in range(120)]
    ids = [str(i) for i in range(120)]
    return SplitData(ids[:90], texts[:90], labels[:90]), SplitData(ids[90:], texts[90:], labels[90:])


HP = Hyperparams(learning_rate=1e-3, weight_decay=0.01, warmup_ratio=0.1, batch_size=8, max_steps=12)


def _train(cfg, splits, out: Path, **kw):
    train, val = splits
    return train_model(cfg=cfg, hparams=HP, train=train, validation=val, out_dir=out, seed=7, **kw)


def test_batch_order_is_a_pure_function_of_step() -> None:
    a = [batch_indices(s, 20, 8, seed=1) for s in range(6)]
    assert a == [batch_indices(s, 20, 8, seed=1) for s in range(6)]
    assert sorted(sum(a[:3], [])) == list(range(20)), "one epoch covers every sample once"
    assert a[:3] != a[3:], "each epoch is reshuffled"


@pytest.mark.parametrize("task", ["classification", "ordinal"])
def test_interrupted_and_resumed_training_equals_uninterrupted(tmp_path, tiny_cfg, splits, task) -> None:
    tiny_cfg["task"] = {"type": task, "labels": ["rotten", "fresh"]}
    tiny_cfg["train"].update(eval_every=4, checkpoint_every=4)
    cfg = parse_config_dict(tiny_cfg)
    full = _train(cfg, splits, tmp_path / "full")
    saved: list[Path] = []
    part = _train(cfg, splits, tmp_path / "part", stop_after_step=6, on_checkpoint=saved.append)
    assert part.steps_run == 6 and saved == [tmp_path / "part" / "checkpoint" / step_version(4)]
    assert read_checkpoint_meta(saved[0])["step"] == 4  # work lost: 2 steps (< one interval)
    resumed = _train(cfg, splits, tmp_path / "part", resume_dir=saved[0])
    assert resumed.resumed_from_step == 4 and resumed.steps_run == 8
    assert resumed.metrics == full.metrics
    assert resumed.history == full.history
    a = final_weights(tmp_path / "full" / "best")
    b = final_weights(tmp_path / "part" / "best")
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert max_diff == 0.0


def test_corrupt_checkpoint_is_skipped_with_a_warning(tmp_path, tiny_cfg, splits, caplog) -> None:
    tiny_cfg["train"].update(checkpoint_every=4)
    cfg = parse_config_dict(tiny_cfg)
    _train(cfg, splits, tmp_path / "run", stop_after_step=4)
    ckpt = tmp_path / "run" / "checkpoint"
    assert read_checkpoint_meta(ckpt) is not None
    weights = ckpt / step_version(4) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as after a kill during save
    with caplog.at_level(logging.WARNING):
        assert read_checkpoint_meta(ckpt) is None
        result = _train(cfg, splits, tmp_path / "run2", resume_dir=ckpt)
    assert "missing or corrupt" in caplog.text
    assert result.resumed_from_step == 0 and result.steps_run == HP.max_steps
    assert final_weights(tmp_path / "run2" / "checkpoint")  # a fresh, intact checkpoint was written


def test_stop_request_checkpoints_at_once_and_resume_is_exact(tmp_path, tiny_cfg, splits) -> None:
    from trainflow.core.errors import TrainingInterrupted

    tiny_cfg["train"].update(checkpoint_every=1000, eval_every=4)  # no regular checkpoint is due
    cfg = parse_config_dict(tiny_cfg)
    full = _train(cfg, splits, tmp_path / "full")
    calls = iter(range(100))
    with pytest.raises(TrainingInterrupted, match="checkpoint saved at step 5") as info:
        _train(cfg, splits, tmp_path / "part", stop_requested=lambda: next(calls) >= 4)
    assert info.value.step == 5
    resumed = _train(cfg, splits, tmp_path / "part", resume_dir=tmp_path / "part" / "checkpoint")
    assert resumed.resumed_from_step == 5 and resumed.metrics == full.metrics
