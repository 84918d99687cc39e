"""The distillation loss for classification and ordinal heads, against the task losses it sits
beside and against a student that learns from it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainflow.training.distill import class_probs, distillation_loss, soft_loss
from trainflow.training.modeling import Cutpoints, cumulative_link_nll


def test_ordinal_probabilities_are_the_cumulative_logit_models() -> None:
    torch.manual_seed(0)
    score, cuts = torch.randn(6, 1), Cutpoints(4)()
    probs = class_probs(score, cuts)
    assert probs.shape == (6, 4) and torch.allclose(probs.sum(-1), torch.ones(6))
    labels = torch.tensor([0, 1, 2, 3, 1, 2])
    nll = -torch.log(probs.gather(1, labels[:, None])).mean()
    assert torch.allclose(nll, cumulative_link_nll(score.squeeze(-1), cuts, labels), atol=1e-6)
    # The temperature divides score and cutpoints alike.
    assert torch.allclose(class_probs(score, cuts, 4.0), class_probs(score / 4.0, cuts / 4.0), atol=1e-6)
    assert not torch.allclose(class_probs(score, cuts, 4.0), probs, atol=1e-3)


def test_the_soft_loss_is_zero_for_the_teacher_itself_and_scaled_by_t_squared() -> None:
    torch.manual_seed(1)
    logits = torch.randn(5, 3)
    for t in (1.0, 2.0, 4.0):
        assert soft_loss(logits, None, class_probs(logits, None, t), t).abs() < 1e-6
    other = torch.randn(5, 3)
    t = 3.0
    kl = F.kl_div(F.log_softmax(other / t, -1), F.softmax(logits / t, -1), reduction="batchmean")
    assert torch.allclose(soft_loss(other, None, class_probs(logits, None, t), t), kl * t * t, atol=1e-6)


def test_alpha_weighs_the_labels_against_the_teacher() -> None:
    torch.manual_seed(2)
    s, teacher = torch.randn(4, 2), class_probs(torch.randn(4, 2), None, 2.0)
    hard = F.cross_entropy(s, torch.tensor([0, 1, 1, 0]))
    soft = soft_loss(s, None, teacher, 2.0)
    assert distillation_loss(hard, s, None, teacher, temperature=2.0, alpha=1.0) == hard
    assert torch.allclose(distillation_loss(hard, s, None, teacher, temperature=2.0, alpha=0.0), soft)
    mixed = distillation_loss(hard, s, None, teacher, temperature=2.0, alpha=0.25)
    assert torch.allclose(mixed, 0.25 * hard + 0.75 * soft)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
            distillation_loss(hard, s, None, teacher, temperature=2.0, alpha=bad)
    with pytest.raises(ValueError, match="temperature must be above 0"):
        class_probs(s, None, 0.0)


@pytest.mark.parametrize("ordinal", [False, True])
def test_a_student_trained_on_the_soft_loss_alone_matches_the_teachers_distribution(ordinal: bool) -> None:
    torch.manual_seed(3)
    x = torch.randn(64, 8)
    classes = 4
    teacher = torch.nn.Linear(8, 1 if ordinal else classes)
    t_cuts = torch.tensor([-1.0, 0.0, 1.5]) if ordinal else None
    with torch.no_grad():
        target = class_probs(teacher(x), t_cuts, 2.0)
    student = torch.nn.Linear(8, 1 if ordinal else classes)
    s_cuts = Cutpoints(classes) if ordinal else None
    params = list(student.parameters()) + (list(s_cuts.parameters()) if s_cuts is not None else [])
    opt = torch.optim.Adam(params, lr=0.05)
    start = float(soft_loss(student(x), s_cuts() if s_cuts else None, target, 2.0).detach())
    for _ in range(400):
        opt.zero_grad()
        loss = soft_loss(student(x), s_cuts() if s_cuts else None, target, 2.0)
        loss.backward()
        opt.step()
    final = float(loss.detach())
    assert final < 0.05 * start and math.isfinite(final)
    with torch.no_grad():
        got = class_probs(student(x), s_cuts() if s_cuts else None, 2.0)
    assert (got - target).abs().max() < 0.05
