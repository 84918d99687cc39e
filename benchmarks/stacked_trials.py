"""K trials in one process with torch.func: stacked parameters, per-trial hyperparameters.

The alternative to packing trials as processes (hpo.workers_per_gpu) that issue 14 asks to
measure: one copy of the model's code, K copies of its trainable weights stacked along a new
leading dimension, one `torch.func.vmap` forward over all K (each trial its own batch, dropout
different per trial), one backward, and an AdamW that updates all K at once with each trial's
learning rate, weight decay and warm-up. Frozen weights (the embeddings) and buffers are shared.

It follows train_model's update exactly: parameter groups as trainflow.train.param_groups
(head learns `head_multiplier` times faster, no decay on biases and norms), gradient clipping
at 1.0 per trial, torch.optim.AdamW's update (betas 0.9/0.999, eps 1e-8, decoupled decay), the
LambdaLR warm-up and linear decay of trainflow.train._lr_lambda. tests/trainflow/test_stacked_trials.py
checks that K stacked trials end where K separate train_model-style loops end.

All trainable weights of all trials live in one (K, N) tensor (the per-parameter tensors the
model sees are views of it), so the optimizer step is a handful of kernels whatever K is, as
fused AdamW is for one trial. Measured by benchmarks/gpu_stacked.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from trainflow.train import _lr_lambda

HEAD = ("pooler", "classifier")  # as TextModel.head_parameters
BETAS = (0.9, 0.999)
EPS = 1e-8


def lr_factors(warmup: int, total: int) -> list[float]:
    """trainflow.train._lr_lambda(warmup, total) at every step 0..total-1."""
    factor = _lr_lambda(warmup, total)
    return [factor(s) for s in range(total)]


class StackedTrials:
    """K trials of one HF sequence classifier (`hf`, starting weights shared) trained at once.

    `hparams`: one dict per trial with learning_rate, weight_decay, warmup_ratio; `total_steps`
    as Hyperparams.max_steps; `head_multiplier` as train.head_lr_multiplier."""

    def __init__(
        self, hf: Any, hparams: Sequence[dict[str, float]], total_steps: int, head_multiplier: float = 10.0
    ) -> None:
        self.hf = hf
        self.k = len(hparams)
        device = next(hf.parameters()).device
        trainable = [(n, p) for n, p in hf.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in trainable]
        self.shapes = [p.shape for _, p in trainable]
        self.sizes = [p.numel() for _, p in trainable]
        self.shared = {n: p.detach() for n, p in hf.named_parameters() if not p.requires_grad}
        self.shared.update(dict(hf.named_buffers()))
        flat = torch.cat([p.detach().reshape(-1) for _, p in trainable])
        self.flat = flat.unsqueeze(0).repeat(self.k, 1).requires_grad_(True)  # (K, N): every trial's weights
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)

        def per_param(values: list[float]) -> torch.Tensor:
            return torch.cat([torch.full((n,), v, device=device) for n, v in zip(self.sizes, values)]).unsqueeze(0)

        self.lr_mult = per_param([head_multiplier if any(h in n for h in HEAD) else 1.0 for n in self.names])
        self.decays = per_param([1.0 if len(s) >= 2 else 0.0 for s in self.shapes])
        self.lr = torch.tensor([[h["learning_rate"]] for h in hparams], device=device)
        self.wd = torch.tensor([[h["weight_decay"]] for h in hparams], device=device)
        self.schedule = torch.tensor(
            [lr_factors(int(h["warmup_ratio"] * total_steps), total_steps) for h in hparams], device=device
        )  # (K, total): the LR factor of every trial at every step, on the device (no copy per step)
        self.steps = 0

    def params(self) -> dict[str, torch.Tensor]:
        """The trainable weights as (K, *shape) views of the stacked tensor."""
        out, offset = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = self.flat[:, offset : offset + size].view(self.k, *shape)
            offset += size
        return out

    def trial_state(self, k: int) -> dict[str, torch.Tensor]:
        """Trial k's weights as the state_dict of `hf` (to save or evaluate the trial alone)."""
        state = {n: t[k].detach().clone() for n, t in self.params().items()}
        return {**{n: t for n, t in self.hf.state_dict().items() if n not in state}, **state}

    def _logits(self, params: dict[str, torch.Tensor], input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # A (B, 1, W) mask: HF turns it into the same additive (B, 1, 1, W) mask as a (B, W) one, but
        # skips the SDPA shortcut `if torch.all(mask == 1)`, data-dependent control flow vmap refuses.
        kwargs = {"input_ids": input_ids, "attention_mask": mask[:, None, :]}
        return functional_call(self.hf, (params, self.shared), args=(), kwargs=kwargs).logits

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(K, B, W) inputs, one batch per trial -> (K, B, classes)."""
        return vmap(self._logits, randomness="different")(self.params(), input_ids, attention_mask)

    def step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, autocast: Any
    ) -> torch.Tensor:
        """One training step of every trial; returns the K losses (before the update)."""
        self.hf.train(True)
        with autocast:
            logits = self.logits(input_ids, attention_mask)
        k, b, c = logits.shape
        losses = F.cross_entropy(logits.float().reshape(k * b, c), labels.reshape(-1), reduction="none")
        losses = losses.view(k, b).mean(dim=1)
        self.flat.grad = None
        losses.sum().backward()  # trials share no weights: each trial's gradient is its own loss's
        self._adamw(self.flat.grad)
        return losses.detach()

    @torch.no_grad()
    def _adamw(self, grad: torch.Tensor) -> None:
        grad.mul_((1.0 / (grad.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0))  # clip_grad_norm_(1.0) per trial
        t = self.steps + 1
        lr = self.lr * self.schedule[:, self.steps : self.steps + 1] * self.lr_mult  # (K, N)
        self.flat.mul_(1.0 - lr * self.wd * self.decays)
        self.exp_avg.lerp_(grad, 1.0 - BETAS[0])
        self.exp_avg_sq.mul_(BETAS[1]).addcmul_(grad, grad, value=1.0 - BETAS[1])
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1.0 - BETAS[1] ** t)).add_(EPS)
        self.flat.sub_(lr / (1.0 - BETAS[0] ** t) * self.exp_avg / denom)
        self.steps += 1


def stack_batches(
    batches: Sequence[dict[str, torch.Tensor]], labels: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """K collated batches (each padded to its own width) -> (K, B, W) ids and mask at the widest, (K, B) labels."""
    width = max(b["input_ids"].shape[1] for b in batches)
    ids = torch.stack([F.pad(b["input_ids"], (0, width - b["input_ids"].shape[1])) for b in batches])
    mask = torch.stack([F.pad(b["attention_mask"], (0, width - b["attention_mask"].shape[1])) for b in batches])
    return ids, mask, torch.stack(list(labels))
