"""Model construction, the ordinal (cumulative-link) head, metrics, and save/load.

Design: the transformer is a stock `AutoModelForSequenceClassification`, so Optimum exports it
unchanged. Classification uses K logits. Ordinal uses ONE scalar score (num_labels=1) plus K-1
ordered cutpoints kept *beside* the Hugging Face model (in `head.json`), never inside it:
P(y <= k | x) = sigmoid(c_k - s(x)); the predicted class is the number of cutpoints below s(x).
The ONNX graph therefore outputs the scalar score and consumers apply the cutpoints.
Multi-label uses one logit per label with binary cross-entropy; its per-label decision thresholds
(tuned on validation) are kept in `head.json` too. Regression uses one output trained on
standardised targets; the training targets' mean and standard deviation (`scale`) are kept in
`head.json` and the value is output * std + mean (trainflow/tasks/task.py).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from trainflow.core.errors import ModelLoadError
from trainflow.core.layout import HEAD as HEAD_FILE
from trainflow.tasks.heads import read_head
from trainflow.tasks.task import TaskHead, n_outputs
from trainflow.training.base_model import resolve_base_model
from trainflow.training.families import anatomy, freeze
from trainflow.training.preflight import ensure_pad_token, head_plan

log = logging.getLogger(__name__)


class Cutpoints(nn.Module):
    """K-1 strictly increasing cutpoints: c_1 = a_0, c_k = c_{k-1} + softplus(a_{k-1}) + MIN_GAP.

    MIN_GAP keeps every class reachable even when softplus underflows in float32."""

    MIN_GAP = 1e-3

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        # Explicit initialisation: evenly spaced around 0, 2 apart. (A parameter missing from a
        # checkpoint would otherwise be left uninitialised by from_pretrained.)
        k = n_classes - 1
        raw = torch.empty(k)
        raw[0] = -(k - 1)
        raw[1:] = math.log(math.expm1(2.0 - self.MIN_GAP))
        self.raw = nn.Parameter(raw)

    def forward(self) -> torch.Tensor:
        gaps = F.softplus(self.raw[1:]) + self.MIN_GAP
        return torch.cumsum(torch.cat([self.raw[:1], gaps]), dim=0)


def cumulative_link_nll(score: torch.Tensor, cutpoints: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the cumulative logit model (score: [B], labels: [B])."""
    cdf = torch.sigmoid(cutpoints[None, :] - score[:, None])  # P(y <= k), [B, K-1]
    ones = torch.ones_like(score)[:, None]
    zeros = torch.zeros_like(score)[:, None]
    upper = torch.cat([cdf, ones], dim=1)
    lower = torch.cat([zeros, cdf], dim=1)
    probs = (upper - lower).gather(1, labels[:, None]).squeeze(1)
    return -torch.log(probs.clamp_min(1e-12)).mean()


@dataclass
class TextModel:
    """A Hugging Face sequence classifier plus, for ordinal tasks, its cutpoints."""

    task: str
    labels: list[str]
    hf: nn.Module
    cutpoints: Cutpoints | None
    head_names: list[str] = field(default_factory=list)  # the classifier's parameters (family anatomy)
    label_smoothing: float = 0.0  # train.label_smoothing: applied to the training loss only
    thresholds: list[float] | None = None  # multilabel: per-label decision thresholds (tuned on validation)
    scale: tuple[float, float] | None = None  # regression: (mean, std) of the training targets

    def head(self) -> TaskHead:
        """What the outputs mean (trainflow/tasks/task.py)."""
        cut = self.cutpoint_values()
        return TaskHead(self.task, tuple(self.labels), None if cut is None else tuple(cut),
                        None if self.thresholds is None else tuple(self.thresholds),
                        None if self.scale is None else (float(self.scale[0]), float(self.scale[1])))  # fmt: skip

    def parameters(self) -> list[nn.Parameter]:
        params = list(self.hf.parameters())
        if self.cutpoints is not None:
            params += list(self.cutpoints.parameters())
        return params

    def head_parameters(self) -> list[nn.Parameter]:
        """The classification head's parameters (found by the family's anatomy, whatever its name:
        classifier, pooler, score, head) and the cutpoints: they get the head learning rate."""
        names = set(self.head_names)
        params = [p for n, p in self.hf.named_parameters() if n in names]
        if self.cutpoints is not None:
            params += list(self.cutpoints.parameters())
        return params

    def to(self, device: torch.device) -> TextModel:
        self.hf.to(device)
        if self.cutpoints is not None:
            self.cutpoints.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        self.hf.train(mode)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.hf(**batch).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss while training (label smoothing for classification), else the plain
        negative log-likelihood (validation); multilabel: binary cross-entropy per label;
        regression: mean squared error on the standardised scale."""
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        if self.task == "regression":
            mean, std = self.scale or (0.0, 1.0)
            return F.mse_loss(logits.reshape(-1), (labels.to(logits.dtype).reshape(-1) - mean) / std)
        if self.cutpoints is None:
            smoothing = self.label_smoothing if self.hf.training else 0.0
            return F.cross_entropy(logits, labels, label_smoothing=smoothing)
        return cumulative_link_nll(logits.squeeze(-1), self.cutpoints(), labels)

    def cutpoint_values(self) -> list[float] | None:
        if self.cutpoints is None:
            return None
        return [float(c) for c in self.cutpoints().detach().cpu()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"hf.{k}": v for k, v in self.hf.state_dict().items()}
        if self.cutpoints is not None:
            state["cutpoints.raw"] = self.cutpoints.raw.data
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.hf.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("hf.")})
        if self.cutpoints is not None:
            self.cutpoints.raw.data.copy_(state["cutpoints.raw"])


def build_model(
    *,
    task: str,
    labels: list[str],
    base: str,
    freeze_embeddings: bool = False,
    frozen_layers: int = 0,
    head: str = "auto",
    tokenizer: Any = None,
    dropout: float | None = None,
    label_smoothing: float = 0.0,
    scale: tuple[float, float] | None = None,
) -> TextModel:
    """Load `base` as a sequence classifier for the task: its own head kept when it fits (`head`
    'auto'), else a new one (logged); the input embeddings and the lowest `frozen_layers` layers
    frozen where the family keeps them (trainflow/training/families.py). A decoder without a padding
    token pads with its end-of-text token (`tokenizer`, loaded from `base` when not given, is told
    so too). `dropout` (not None) sets every dropout rate of the family's config (hidden,
    attention, classifier: `set_dropout`); `label_smoothing` applies to the training loss;
    `scale` is a regression task's (mean, std) of the training targets.

    Raises:
        ModelLoadError: the base model cannot be found or loaded, its head does not fit and
            `head` is 'keep', or the freezing does not apply to its family.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_base_model(base)
    num_labels = n_outputs(task, labels)
    if task in ("classification", "multilabel"):
        names = dict(enumerate(labels))
    else:
        names = {0: labels[0] if task == "regression" and labels else "score"}
    try:
        theirs = AutoConfig.from_pretrained(source)
        config = AutoConfig.from_pretrained(
            source, num_labels=num_labels, id2label=names, label2id={n: i for i, n in names.items()}
        )
        tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"cannot load base model {base!r} (resolved to {source!r}): {err}") from None
    if dropout is not None:
        set_dropout(config, dropout)
    plan, problem = head_plan(theirs, num_labels, head)
    if problem:
        raise ModelLoadError(problem)
    ensure_pad_token(tokenizer, config)
    try:
        hf = AutoModelForSequenceClassification.from_pretrained(source, config=config, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load base model {base!r} (resolved to {source!r}): {err}") from None
    parts = anatomy(hf)
    if head == "new":
        _reset_head(hf)
    log.info("base model %s (%s, %d layers): %s", base, parts.model_type, parts.n_layers, plan)
    frozen = freeze(hf, parts, freeze_embeddings=freeze_embeddings, frozen_layers=frozen_layers)
    if frozen:
        log.info("frozen: %s", ", ".join(frozen))
    return TextModel(
        task=task,
        labels=list(labels),
        hf=hf,
        cutpoints=_cutpoints(source, labels, head) if task == "ordinal" else None,
        head_names=parts.head_names,
        label_smoothing=label_smoothing,
        scale=(scale or (0.0, 1.0)) if task == "regression" else None,
    )


def _cutpoints(source: str, labels: list[str], head: str) -> Cutpoints:
    """Fresh cutpoints, or (unless `head` is 'new') those of a trainflow model of the same labels in
    `source` (a student cut from an ordinal teacher starts with the teacher's)."""
    cut = Cutpoints(len(labels))
    head_file = Path(source) / HEAD_FILE
    if head != "new" and head_file.is_file():
        saved = json.loads(head_file.read_text())
        if saved.get("task") == "ordinal" and saved.get("labels") == list(labels) and saved.get("cutpoints_raw"):
            cut.raw.data.copy_(torch.tensor(saved["cutpoints_raw"]))
            log.info("ordinal cutpoints from %s", head_file)
    return cut


def dropout_fields(config: Any) -> list[str]:
    """The dropout rates of a Hugging Face config, whatever the family names them
    (`hidden_dropout_prob`, `attention_probs_dropout_prob`, `classifier_dropout`, DistilBERT's
    `dropout` and `seq_classif_dropout`, GPT-2's `resid_pdrop`, ModernBERT's `mlp_dropout`, ...)."""
    names = []
    for name, value in config.to_dict().items():
        rate = "dropout" in name or name.endswith("pdrop")
        if rate and not isinstance(value, bool) and (value is None or isinstance(value, int | float)):
            names.append(name)
    return sorted(names)


def set_dropout(config: Any, rate: float) -> list[str]:
    """Set every dropout rate of `config` to `rate`; the names set."""
    names = dropout_fields(config)
    for name in names:
        setattr(config, name, float(rate))
    return names


def _reset_head(hf: Any) -> None:
    """Initialise the modules outside the base model afresh (model.head: new)."""
    prefix = str(hf.base_model_prefix)
    for name, module in hf.named_children():
        if name != prefix:
            module.apply(hf._init_weights)


def save_model(model: TextModel, tokenizer: object, folder: Path) -> None:
    """Write an HF folder (config, safetensors, tokenizer) plus head.json with task, labels, cutpoints
    (ordinal), thresholds (multilabel) and scale (regression)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.hf.save_pretrained(folder, safe_serialization=True)  # type: ignore[operator]
    tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    head: dict[str, Any] = {"task": model.task, "labels": model.labels, "cutpoints": model.cutpoint_values()}
    if model.thresholds is not None:
        head["thresholds"] = [float(t) for t in model.thresholds]
    if model.scale is not None:
        head["scale"] = [float(v) for v in model.scale]
    if model.cutpoints is not None:
        head["cutpoints_raw"] = [float(x) for x in model.cutpoints.raw.detach().cpu()]
    (folder / HEAD_FILE).write_text(json.dumps(head, indent=2))


def pad_id(tokenizer: Any) -> int:
    """The token a batch is padded with: the tokenizer's padding token, else (a decoder) its end of text."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad or 0)


def load_model(folder: Path) -> tuple[TextModel, object]:
    """Load a folder written by `save_model`: (model in eval mode, tokenizer)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    head = read_head(folder)
    hf = AutoModelForSequenceClassification.from_pretrained(folder)
    cut = None
    if head["task"] == "ordinal":
        cut = Cutpoints(len(head["labels"]))
        cut.raw.data.copy_(torch.tensor(head["cutpoints_raw"]))
    scale = head.get("scale")
    model = TextModel(task=head["task"], labels=head["labels"], hf=hf, cutpoints=cut, thresholds=head.get("thresholds"),
                      scale=None if scale is None else (float(scale[0]), float(scale[1])))  # fmt: skip
    model.train(False)
    return model, AutoTokenizer.from_pretrained(folder)
