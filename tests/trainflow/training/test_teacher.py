"""The teacher's outputs: computed once, checksummed, reused, computed again when they do not
match; and a student (ordinal here) that learns them through the training loop."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny import rt_texts, tiny_config
from trainflow.core.config import parse_config_dict
from trainflow.core.layout import TEACHER_OUTPUTS
from trainflow.data.dataset import SplitData
from trainflow.training.distill import DistillObjective, class_probs
from trainflow.training.hparams import Hyperparams
from trainflow.training.modeling import load_model
from trainflow.training.student import make_student, read_student
from trainflow.training.teacher import teacher_outputs
from trainflow.training.train import encode, predict_logits, train_model

ORDINAL = ["1", "2", "3", "4"]


def _split(n: int, classes: int) -> SplitData:
    return SplitData([str(i) for i in range(n)], rt_texts(n), [i % classes for i in range(n)])


def test_outputs_are_computed_once_then_reused_and_recomputed_when_they_do_not_match(
    tiny_trained: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = _split(40, 2)
    first = teacher_outputs(teacher_dir=tiny_trained, train=train, max_length=32, out_dir=tmp_path, hidden=True)
    assert not first.reused and first.logits.shape == (40, 2) and first.cutpoints is None
    assert first.hidden is not None and first.hidden.shape == (40, 3, 32)  # embeddings + 2 layers, width 32
    model, tok = load_model(tiny_trained)
    direct = predict_logits(model, encode(tok, train.texts, 32), int(tok.pad_token_id), torch.device("cpu"))
    np.testing.assert_allclose(first.logits, direct, atol=1e-5)

    again = teacher_outputs(teacher_dir=tiny_trained, train=train, max_length=32, out_dir=tmp_path, hidden=True)
    assert again.reused and again.sha256 == first.sha256
    np.testing.assert_array_equal(again.logits, first.logits)

    with caplog.at_level(logging.WARNING):
        data = bytearray((tmp_path / TEACHER_OUTPUTS).read_bytes())
        data[-1] ^= 0xFF  # one flipped byte
        (tmp_path / TEACHER_OUTPUTS).write_bytes(bytes(data))
        fixed = teacher_outputs(teacher_dir=tiny_trained, train=train, max_length=32, out_dir=tmp_path, hidden=True)
        assert not fixed.reused and fixed.sha256 == first.sha256
        assert "do not match their recorded SHA-256" in caplog.text
        other = teacher_outputs(teacher_dir=tiny_trained, train=_split(30, 2), max_length=32, out_dir=tmp_path)
        assert not other.reused and other.logits.shape == (30, 2)
        assert "another teacher or other rows" in caplog.text


def _mean_kl(student_dir: Path, train: SplitData, teacher_logits: np.ndarray, cut: list[float] | None) -> float:
    model, tok = load_model(student_dir)
    logits = torch.from_numpy(predict_logits(model, encode(tok, train.texts, 32), int(tok.pad_token_id),
                                             torch.device("cpu")))  # fmt: skip
    student_cut = model.cutpoints() if model.cutpoints is not None else None
    t_cut = None if cut is None else torch.tensor(cut)
    p, q = class_probs(torch.from_numpy(teacher_logits), t_cut), class_probs(logits, student_cut)
    with torch.no_grad():
        return float((p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(-1).mean())


def test_an_ordinal_student_learns_its_teachers_class_distribution(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = parse_config_dict(tiny_config(tmp_path, tiny_model_dir, task={"type": "ordinal", "labels": ORDINAL},
                                        hpo__metric="mae"))  # fmt: skip
    train = _split(96, 4)
    hp = Hyperparams(learning_rate=2e-3, weight_decay=0.0, warmup_ratio=0.0, batch_size=8, max_steps=20)
    teacher = Path(
        train_model(cfg=cfg, hparams=hp, train=train, validation=train, out_dir=tmp_path / "t", seed=0).model_dir
    )
    student = make_student(teacher, 1, tmp_path / "student")
    assert read_student(student.path) == student and student.teacher_layer_of == (1,)
    outputs = teacher_outputs(
        teacher_dir=teacher, train=train, max_length=32, out_dir=tmp_path / "outputs", hidden=True
    )
    assert outputs.cutpoints is not None and len(outputs.cutpoints) == 3 and outputs.logits.shape == (96, 1)
    # The student starts from the teacher's cutpoints (head.json travels with it).
    s_model, _ = load_model(student.path)
    np.testing.assert_allclose(s_model.cutpoint_values(), outputs.cutpoints, atol=1e-6)

    def objective(alpha: float):  # noqa: ANN202
        def build(device: torch.device) -> DistillObjective:
            return DistillObjective(labels=train.labels, teacher_logits=torch.from_numpy(outputs.logits),
                                    teacher_cutpoints=outputs.cutpoints, temperature=2.0, alpha=alpha,
                                    hidden_weight=0.5, teacher_hidden=torch.from_numpy(outputs.hidden),
                                    teacher_layer_of=[1], device=device)  # fmt: skip

        return build

    s_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"base": str(student.path)})})
    hp_s = Hyperparams(learning_rate=3e-3, weight_decay=0.0, warmup_ratio=0.0, batch_size=8, max_steps=30)
    kl = {}
    for alpha in (0.0, 1.0):  # the teacher's outputs only; the labels only (plain fine-tuning, through the same path)
        result = train_model(cfg=s_cfg, hparams=hp_s, train=train, validation=train, out_dir=tmp_path / f"s{alpha}",
                             seed=0, objective=objective(alpha), keep="last")  # fmt: skip
        kl[alpha] = _mean_kl(Path(result.model_dir), train, outputs.logits, outputs.cutpoints)
        assert set(result.metrics) >= {"mae", "accuracy"}  # validated on the task's metrics, not its training loss
    assert kl[0.0] < 0.5 * kl[1.0], kl
