"""Parity gate: PyTorch and ONNX Runtime must agree on held-out samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainflow.convert.onnx_model import OnnxTextModel, tokenize_batches
from trainflow.core.errors import ParityError
from trainflow.training.modeling import load_model


@dataclass(frozen=True)
class ParityResult:
    n_samples: int
    max_abs_diff: float
    mean_abs_diff: float
    prediction_agreement: float
    atol: float
    # |PyTorch - ONNX| of every output element, binned by decade: (log10 lower edge, count) for
    # the non-empty decades. Values below 10^ZERO_DECADE, exact zeros included, count in that bin.
    error_histogram: list[tuple[int, int]] = field(default_factory=list)


ZERO_DECADE = -12


def decade_histogram(abs_diffs: np.ndarray, lowest: int = ZERO_DECADE) -> list[tuple[int, int]]:
    """Counts of `abs_diffs` per decade [10^k, 10^(k+1)), for the decades that hold any; values
    below 10^lowest (zeros included) count in the `lowest` bin."""
    if abs_diffs.size == 0:
        return []
    with np.errstate(divide="ignore"):
        decades = np.floor(np.log10(abs_diffs.astype(np.float64)))
    decades = np.where(np.isfinite(decades), decades, lowest).clip(min=lowest).astype(int)
    lo, hi = int(decades.min()), int(decades.max())
    counts = np.bincount(decades - lo, minlength=hi - lo + 1)
    return [(lo + i, int(c)) for i, c in enumerate(counts) if c]


def check_parity(
    *, model_dir: Path, onnx_path: Path, texts: list, max_length: int, atol: float, batch_size: int = 8
) -> ParityResult:
    """Compare the outputs of the PyTorch model in `model_dir` with `onnx_path` on `texts` (strings,
    or (text, pair text) tuples), element by element whatever the task's output shape; the share of
    rows whose decision (class, label set, value within tolerance) agrees is reported.

    Batches are padded to their longest member, so padding and the dynamic axes are exercised.

    Raises:
        ParityError: max |logit difference| > atol (the class agreement is reported, not gated:
            a near-tie may flip within tolerance).
    """
    model, tokenizer = load_model(model_dir)
    onnx_model = OnnxTextModel(onnx_path, tokenizer, max_length)
    diffs, agree, n = [], 0, 0
    head = model.head()
    for _, feeds in tokenize_batches(tokenizer, texts, max_length, batch_size, onnx_model.input_names):
        with torch.no_grad():
            ref = model.hf(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
        got = onnx_model.session.run(["logits"], feeds)[0]  # type: ignore[attr-defined]
        diffs.append(np.abs(ref - got).reshape(-1))
        agree += int(head.agree(ref, got).sum())
        n += len(ref)
    d = np.concatenate(diffs)
    result = ParityResult(
        n_samples=n,
        max_abs_diff=float(d.max()),
        mean_abs_diff=float(d.mean()),
        prediction_agreement=agree / n,
        atol=atol,
        error_histogram=decade_histogram(d[np.isfinite(d)]),
    )
    if not result.max_abs_diff <= atol:  # also catches NaN
        raise ParityError(
            f"ONNX model {onnx_path} fails the parity gate: max |logit diff| {result.max_abs_diff:.3g}"
            f" > atol {atol:.3g} over {n} samples (predicted class differs on {n - agree})"
        )
    return result
