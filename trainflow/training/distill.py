"""The distillation loss: a student learns the teacher's class distribution as well as the labels.

    loss = alpha * task loss(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

where `_T` is the class distribution at temperature T (Hinton et al., 2015; the T^2 keeps the
soft term's gradients on the scale of the hard one as T grows). Classification: softmax of the
logits / T. Ordinal: the class distribution the cumulative-logit head gives, P(y <= k) =
sigmoid((c_k - s) / T) for the score s and cutpoints c, so an ordinal student learns how the
teacher spreads a text over the ordered levels, not only its score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_probs(logits: torch.Tensor, cutpoints: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
    """[B, C] class probabilities at `temperature`: softmax of classification logits [B, C], or the
    cumulative-logit distribution of ordinal scores [B, 1] under `cutpoints` [C - 1]."""
    if temperature <= 0:
        raise ValueError(f"temperature must be above 0, not {temperature}")
    if cutpoints is None:
        return F.softmax(logits / temperature, dim=-1)
    score = logits.reshape(-1)
    cdf = torch.sigmoid((cutpoints[None, :] - score[:, None]) / temperature)  # P(y <= k), [B, C-1]
    upper = torch.cat([cdf, torch.ones_like(score)[:, None]], dim=1)
    lower = torch.cat([torch.zeros_like(score)[:, None], cdf], dim=1)
    return (upper - lower).clamp_min(0.0)


def soft_loss(
    student_logits: torch.Tensor,
    student_cutpoints: torch.Tensor | None,
    teacher_probs: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T^2 * KL(teacher || student), averaged over the batch; `teacher_probs` are the teacher's
    class probabilities at the same temperature."""
    student = class_probs(student_logits, student_cutpoints, temperature).clamp_min(1e-12)
    teacher = teacher_probs.clamp_min(0.0)
    kl = (teacher * (torch.log(teacher.clamp_min(1e-12)) - torch.log(student))).sum(dim=-1)
    return kl.mean() * temperature**2


def distillation_loss(
    task_loss: torch.Tensor,
    student_logits: torch.Tensor,
    student_cutpoints: torch.Tensor | None,
    teacher_probs: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * task_loss + (1 - alpha) * soft_loss (see the module docstring)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    if alpha == 1.0:
        return task_loss
    return alpha * task_loss + (1.0 - alpha) * soft_loss(student_logits, student_cutpoints, teacher_probs, temperature)
