"""K trials stacked in one process with torch.func (benchmarks/stacked_trials.py, measured by
benchmarks/gpu_stacked.py against packed processes): the stacked update must be the
update train_model runs, trial by trial, or its throughput would not be comparable."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from stacked_trials import StackedTrials, stack_batches  # noqa: E402

from trainflow.modeling import TextModel  # noqa: E402
from trainflow.train import Hyperparams, _lr_lambda, collate, param_groups  # noqa: E402

HPARAMS = [
    {"learning_rate": 3e-4, "weight_decay": 0.0, "warmup_ratio": 0.0},
    {"learning_rate": 1e-3, "weight_decay": 0.1, "warmup_ratio": 0.2},
    {"learning_rate": 5e-5, "weight_decay": 0.05, "warmup_ratio": 0.5},
]
STEPS = 6


def tiny_classifier(dropout: float = 0.0) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=2, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = BertForSequenceClassification(config)
    for p in hf.bert.embeddings.parameters():  # frozen, as model.freeze_embeddings
        p.requires_grad_(False)
    with torch.no_grad():  # a sharp head: gradient norms of 3-5, so the clipping at 1.0 is exercised
        hf.classifier.weight.mul_(30.0)
    return hf


def trial_batches(seed: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """STEPS batches of 4 sequences of 3..12 tokens, different per trial, as collate pads them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(STEPS):
        seqs = [
            torch.randint(1, 50, (int(torch.randint(3, 13, (1,), generator=g)),), generator=g).tolist()
            for _ in range(4)
        ]
        out.append((collate(seqs, pad_id=0, device=torch.device("cpu")), torch.randint(0, 2, (4,), generator=g)))
    return out


def reference_run(hf: torch.nn.Module, hp: dict[str, float], batches: list) -> dict[str, torch.Tensor]:
    """train_model's update on one trial: param groups, AdamW, LambdaLR, clipping at 1.0."""
    model = TextModel(task="classification", labels=["a", "b"], hf=copy.deepcopy(hf), cutpoints=None)
    hparams = Hyperparams(batch_size=4, max_steps=STEPS, **hp)
    opt = torch.optim.AdamW(param_groups(model, hparams, 10.0), lr=hparams.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(int(hp["warmup_ratio"] * STEPS), STEPS))
    trainable = [p for g in opt.param_groups for p in g["params"]]
    for batch, labels in batches:
        model.train(True)
        loss = model.loss(model.logits(batch).float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
    return model.hf.state_dict()


def test_stacked_trials_end_where_separate_trials_end() -> None:
    hf = tiny_classifier()
    per_trial = [trial_batches(seed) for seed in range(len(HPARAMS))]
    expected = [reference_run(hf, hp, batches) for hp, batches in zip(HPARAMS, per_trial)]
    stacked = StackedTrials(copy.deepcopy(hf), HPARAMS, total_steps=STEPS, head_multiplier=10.0)
    for step in range(STEPS):
        ids, mask, labels = stack_batches([b[step][0] for b in per_trial], [b[step][1] for b in per_trial])
        losses = stacked.step(ids, mask, labels, torch.autocast("cpu", enabled=False))
        assert losses.shape == (len(HPARAMS),)
    start = hf.state_dict()
    for k, want in enumerate(expected):
        got = stacked.trial_state(k)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=f"trial {k}: {name}")
        moved = [n for n in want if not torch.equal(want[n], start[n])]
        assert "classifier.weight" in moved and "bert.encoder.layer.0.attention.self.query.weight" in moved
        assert not any(n.startswith("bert.embeddings.") and "LayerNorm" not in n for n in moved)  # frozen stays
    # the trials really differ (different LRs, decays, data): no trial's weights equal another's
    assert not torch.allclose(expected[0]["classifier.weight"], expected[1]["classifier.weight"])


def test_the_extra_padding_of_a_stacked_batch_changes_no_logit() -> None:
    """Trials' batches are padded to the widest of the K; masked padding must not change logits."""
    hf = tiny_classifier().eval()
    stacked = StackedTrials(hf, HPARAMS[:2], total_steps=STEPS)
    short, long = trial_batches(0)[0][0], trial_batches(1)[0][0]
    ids, mask, _ = stack_batches([short, long], [torch.zeros(4, dtype=torch.long)] * 2)
    assert ids.shape[2] == max(short["input_ids"].shape[1], long["input_ids"].shape[1])
    with torch.no_grad():
        logits = stacked.logits(ids, mask)
        alone = hf(**short).logits
    torch.testing.assert_close(logits[0], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 4])
def test_dropout_differs_per_trial(k: int) -> None:
    stacked = StackedTrials(tiny_classifier(dropout=0.5), [HPARAMS[0]] * k, total_steps=STEPS)
    batch = trial_batches(0)[0][0]
    ids, mask, _ = stack_batches([batch] * k, [torch.zeros(4, dtype=torch.long)] * k)
    stacked.hf.train(True)
    with torch.no_grad():
        a, b = stacked.logits(ids, mask), stacked.logits(ids, mask)
    assert not torch.allclose(a, b)  # dropout is on
    if k > 1:  # same weights, same batch: only the per-trial dropout masks can tell trials apart
        assert not torch.allclose(a[0], a[1])
