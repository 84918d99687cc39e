"""The distillation loss: a student learns the teacher's class distribution as well as the labels.

    loss = alpha * task loss(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

where `_T` is the class distribution at temperature T (Hinton et al., 2015; the T^2 keeps the
soft term's gradients on the scale of the hard one as T grows). Classification: softmax of the
logits / T. Ordinal: the class distribution the cumulative-logit head gives, P(y <= k) =
sigmoid((c_k - s) / T) for the score s and cutpoints c, so an ordinal student learns how the
teacher spreads a text over the ordered levels, not only its score. Multi-label: each label's
probability at temperature T, sigmoid(z / T), learnt by binary cross-entropy against the teacher's
(T^2 * BCE). Regression: the teacher's predicted value, learnt by mean squared error on the
student's standardised scale (no temperature: a value has no distribution to soften).
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


def hidden_states_loss(
    student_states: tuple[torch.Tensor, ...],
    mask: torch.Tensor,
    teacher_pooled: torch.Tensor,
    teacher_layer_of: list[int],
) -> torch.Tensor:
    """Mean squared error between each student layer's mean-pooled hidden state and the pooled
    state of the teacher layer it was cut from (the embeddings' output against the teacher's).

    `student_states`: the student's `hidden_states` (embeddings first, [B, T, H] each);
    `teacher_pooled`: [B, teacher layers + 1, H]; `teacher_layer_of[i]`: the teacher layer (0-based)
    of student layer i."""
    from trainflow.training.teacher import mean_pool

    pooled = mean_pool(torch.stack(student_states, dim=1).float(), mask)  # [B, student layers + 1, H]
    targets = teacher_pooled[:, [0, *(t + 1 for t in teacher_layer_of)], :].float()
    return F.mse_loss(pooled, targets)


class DistillObjective:
    """The training objective of a student: `forward` gives its logits (and keeps its hidden states
    when the hidden loss is on), `loss(model, logits, rows)` the distillation loss of those training
    rows (the batches carry row numbers, not labels, so each row finds its teacher outputs)."""

    def __init__(
        self,
        *,
        labels: list,
        teacher_logits: torch.Tensor,
        teacher_cutpoints: list[float] | None,
        temperature: float,
        alpha: float,
        hidden_weight: float = 0.0,
        teacher_hidden: torch.Tensor | None = None,
        teacher_layer_of: list[int] | None = None,
        device: torch.device,
        task: str = "classification",
        teacher_scale: list[float] | None = None,
    ) -> None:
        cut = None if teacher_cutpoints is None else torch.tensor(teacher_cutpoints, dtype=torch.float32)
        self.labels = torch.tensor(labels, device=device)
        self.task = task
        if task == "multilabel":  # per-label probabilities at temperature T
            self.teacher_probs = torch.sigmoid(teacher_logits.float() / temperature).to(device)
        elif task == "regression":  # the teacher's values on the targets' scale
            mean, std = teacher_scale or (0.0, 1.0)
            self.teacher_probs = (teacher_logits.float().reshape(-1) * std + mean).to(device)
        else:
            self.teacher_probs = class_probs(teacher_logits.float(), cut, temperature).to(device)
        self.temperature, self.alpha = temperature, alpha
        self.hidden = hidden_weight > 0 and teacher_hidden is not None and teacher_layer_of is not None
        self.hidden_weight = hidden_weight
        self.teacher_hidden, self.teacher_layer_of = teacher_hidden, teacher_layer_of
        self._states: tuple[tuple[torch.Tensor, ...], torch.Tensor] | None = None

    def forward(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: ANN001 - a TextModel
        if not self.hidden:
            return model.logits(batch)
        out = model.hf(**batch, output_hidden_states=True)
        self._states = (out.hidden_states, batch["attention_mask"])
        return out.logits

    def _soft(self, model, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - a TextModel
        """The teacher term of multi-label and regression students (module docstring)."""
        target = self.teacher_probs[rows]
        if self.task == "multilabel":
            t = self.temperature
            return F.binary_cross_entropy_with_logits(logits / t, target) * t**2
        mean, std = model.scale or (0.0, 1.0)
        return F.mse_loss(logits.reshape(-1), (target - mean) / std)

    def loss(self, model, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - a TextModel
        task_loss = model.loss(logits, self.labels[rows])
        if self.task in ("multilabel", "regression"):
            total = (
                task_loss
                if self.alpha == 1.0
                else (self.alpha * task_loss + (1.0 - self.alpha) * self._soft(model, logits, rows))
            )
        else:
            cut = model.cutpoints() if model.cutpoints is not None else None
            total = distillation_loss(task_loss, logits, cut, self.teacher_probs[rows],
                                      temperature=self.temperature, alpha=self.alpha)  # fmt: skip
        if self.hidden and self._states is not None:
            states, mask = self._states
            teacher = self.teacher_hidden[rows.cpu()].to(logits.device)  # type: ignore[index]
            total = total + self.hidden_weight * hidden_states_loss(states, mask, teacher, self.teacher_layer_of)  # type: ignore[arg-type]
            self._states = None
        return total
