"""The teacher's outputs on the training split: computed once per run, checksummed, reused.

Every student of a distillation learns from the same teacher outputs: its logits on each training
row (ordinal: its score, with its cutpoints), and with `distill.hidden_loss` the mean-pooled hidden
state of each of its layers. They are written once to `<run dir>/distill/teacher-outputs.safetensors`
beside a `teacher-outputs.json` that names what they were computed from (the teacher's weights'
checksum, the rows, `model.max_length`) and the file's SHA-256. A student trial, a retry or a
`resume` reads the file after checking both; a file that fails the check (another teacher, other
rows, a changed or truncated file) is computed again, and the log says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainflow.core.io import atomic_write, atomic_write_json, sha256_file
from trainflow.core.layout import TEACHER_OUTPUTS, TEACHER_OUTPUTS_META
from trainflow.data.dataset import SplitData
from trainflow.training.base_model import checksum_model_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherOutputs:
    logits: np.ndarray  # [rows, classes] (ordinal: [rows, 1], the score)
    cutpoints: list[float] | None  # ordinal: the teacher's cutpoints
    hidden: np.ndarray | None  # [rows, layers + 1, hidden] mean-pooled hidden states (embeddings first), float16
    path: Path
    sha256: str
    reused: bool  # read from an earlier computation (a student, a retry or a resume)
    scale: list[float] | None = None  # regression: the teacher's (mean, std); its value = logit * std + mean


def _rows_digest(train: SplitData) -> str:
    return hashlib.sha256(
        json.dumps([train.ids, train.texts, train.labels] + ([train.pairs] if train.pairs is not None else [])).encode()
    ).hexdigest()


def _key(teacher_dir: Path, train: SplitData, max_length: int, hidden: bool) -> dict[str, object]:
    return {"teacher": checksum_model_dir(teacher_dir), "rows": _rows_digest(train), "n_rows": len(train),
            "max_length": max_length, "hidden": hidden}  # fmt: skip


@torch.no_grad()
def _compute(
    teacher_dir: Path, train: SplitData, max_length: int, hidden: bool, device: torch.device, batch_size: int = 64
) -> tuple[np.ndarray, list[float] | None, np.ndarray | None, list[float] | None]:
    from trainflow.training.modeling import load_model, pad_id
    from trainflow.training.train import collate, encode, predict_logits

    model, tokenizer = load_model(teacher_dir)
    scale = None if model.scale is None else [float(v) for v in model.scale]
    model.to(device)
    encoded, pad = encode(tokenizer, train.inputs, max_length), pad_id(tokenizer)
    if not hidden:  # the evaluation's own batching (by length, halved on out-of-memory)
        return predict_logits(model, encoded, pad, device, batch_size), model.cutpoint_values(), None, scale
    model.train(False)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # little padding
    logits: list[np.ndarray] = [np.empty(0)] * len(encoded)
    pooled: list[np.ndarray] = [np.empty(0)] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([encoded[i] for i in idx], pad, device)
        out = model.hf(**batch, output_hidden_states=True)
        rows = out.logits.float().cpu().numpy()
        states = mean_pool(torch.stack(out.hidden_states, dim=1), batch["attention_mask"]).to(torch.float16).cpu()
        for j, i in enumerate(idx):
            logits[i], pooled[i] = rows[j], states[j].numpy()
    return np.stack(logits), model.cutpoint_values(), np.stack(pooled), scale


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, T, H] hidden states (layers stacked) -> [B, L, H]: each layer's mean over the tokens
    the attention mask keeps."""
    m = mask.to(states.dtype)[:, None, :, None]
    return (states * m).sum(dim=2) / m.sum(dim=2).clamp_min(1.0)


def _read(path: Path, meta: dict[str, object], cutpoints: list[float] | None) -> TeacherOutputs:
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    return TeacherOutputs(tensors["logits"], cutpoints, tensors.get("hidden"), path, str(meta["sha256"]), True,
                          meta.get("scale"))  # type: ignore[arg-type]  # fmt: skip


def teacher_outputs(
    *, teacher_dir: Path, train: SplitData, max_length: int, out_dir: Path, hidden: bool = False, device: str = "cpu"
) -> TeacherOutputs:
    """The teacher's outputs on `train` (module docstring): read from `out_dir` when an earlier
    computation for the same teacher, rows and max_length is there and intact, else computed
    (on `device`) and written there atomically."""
    from safetensors.numpy import save_file

    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    path, meta_path = out_dir / TEACHER_OUTPUTS, out_dir / TEACHER_OUTPUTS_META
    key = _key(teacher_dir, train, max_length, hidden)
    if meta_path.is_file() and path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            log.warning("teacher outputs in %s were computed for another teacher or other rows: computing them again",
                        out_dir)  # fmt: skip
        elif sha256_file(path) != meta.get("sha256"):
            log.warning("teacher outputs %s do not match their recorded SHA-256 (changed or truncated): computing"
                        " them again", path)  # fmt: skip
        else:
            log.info("teacher outputs: reusing %s (%d rows, SHA-256 %s...)", path, len(train), meta["sha256"][:12])
            return _read(path, meta, meta.get("cutpoints"))
    out_dir.mkdir(parents=True, exist_ok=True)
    logits, cutpoints, pooled, scale = _compute(teacher_dir, train, max_length, hidden, torch.device(device))
    tensors = {"logits": np.ascontiguousarray(logits, dtype=np.float32)}
    if pooled is not None:
        tensors["hidden"] = np.ascontiguousarray(pooled)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp))
    digest = sha256_file(path)
    atomic_write_json(meta_path, {"key": key, "sha256": digest, "cutpoints": cutpoints, "scale": scale,
                                  "file": TEACHER_OUTPUTS})  # fmt: skip
    log.info("teacher outputs: computed on %d training rows (%s), SHA-256 %s...", len(train), path, digest[:12])
    return TeacherOutputs(logits, cutpoints, pooled, path, digest, False, scale)
