"""Fine-tune one trial: a plain, resumable training loop (no metaflow, no optuna).

Resume is exact on CPU: a checkpoint holds the model, optimizer, LR scheduler, the Python /
NumPy / torch RNG states and the step; the batch order is a pure function of (seed, step), so
the data position needs no extra state. Checkpoint folders carry a `meta.json` with the SHA-256
of each file; a folder that fails the check (half-written, truncated) is skipped with a warning.

Callers wire the outside world in through callbacks:
  on_checkpoint(folder)      after each checkpoint is complete on disk (e.g. metaflow's save)
  on_eval(step, metrics)     after each validation pass (may raise to stop, e.g. pruning)
  log(step, values)          per-step scalars (e.g. W&B)
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from trainflow.core.config import RunConfig
from trainflow.core.diskspace import ensure_free_space
from trainflow.core.errors import TrainingInterrupted, TrainingResourceError
from trainflow.core.io import VersionedDir
from trainflow.core.layout import BEST_DIR, CHECKPOINT_DIR, TRAINER_STATE, WEIGHTS, step_version
from trainflow.data.dataset import SplitData
from trainflow.training import accel
from trainflow.training.base_model import resolve_base_model
from trainflow.training.checkpoints import CheckpointWriter, take_snapshot, write_snapshot
from trainflow.training.hparams import Hyperparams
from trainflow.training.modeling import TextModel, build_model, save_model
from trainflow.training.resume import Checkpoint, latest_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    metrics: dict[str, float]
    best_step: int
    model_dir: str
    steps_run: int
    resumed_from_step: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    micro_batch_size: int = 0  # < the batch size after an out-of-memory back-off


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the batch at `step`: epoch e is a seeded permutation of range(n)."""
    per_epoch = math.ceil(n / batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[pos * batch_size : (pos + 1) * batch_size].tolist()


class TokenIds(list):
    """A sequence's token ids; a text pair's also carry its `type_ids` (0 for the first text, 1
    for the second) where the family has token types."""

    type_ids: list[int] | None = None


def collate(
    encoded: list[list[int]], pad_id: int, device: torch.device, pad_to_multiple: int = 1, max_width: int = 0
) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad to the longest sequence in the batch, not to max_length (rounded up
    to a multiple of `pad_to_multiple`, but not past `max_width` when that is set). Text pairs
    (`TokenIds` with type ids) also get `token_type_ids`."""
    width = max(len(e) for e in encoded)
    if pad_to_multiple > 1:
        rounded = -(-width // pad_to_multiple) * pad_to_multiple
        width = min(rounded, max(width, max_width)) if max_width else rounded
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    typed = any(getattr(e, "type_ids", None) is not None for e in encoded)
    types = torch.zeros((len(encoded), width), dtype=torch.long) if typed else None
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
        if types is not None and getattr(e, "type_ids", None) is not None:
            types[i, : len(e)] = torch.tensor(e.type_ids)  # type: ignore[attr-defined]
    out = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if types is not None:
        out["token_type_ids"] = types.to(device)
    return out


def encode(tokenizer: object, texts: list[str] | list[tuple[str, str]], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to `max_length`; (text, pair text) tuples are encoded as
    pairs (`encode_pairs`)."""
    if texts and isinstance(texts[0], tuple):
        firsts, seconds = [t[0] for t in texts], [t[1] for t in texts]
        out = encode_pairs(tokenizer, firsts, seconds, max_length)  # type: ignore[arg-type]
        types = out.get("token_type_ids")
        encoded: list[list[int]] = []
        for i, ids in enumerate(out["input_ids"]):
            item = TokenIds(ids)
            item.type_ids = None if types is None else list(types[i])
            encoded.append(item)
        return encoded
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]  # type: ignore[operator]


def encode_pairs(tokenizer: object, texts: list[str], pairs: list[str], max_length: int) -> dict[str, list[list[int]]]:
    """Text pairs encoded as pairs: input_ids and token_type_ids (where the family has them), the
    pair truncated longest-first to `max_length` (what the package's tokenizer does)."""
    out = tokenizer(texts, text_pair=pairs, truncation="longest_first", max_length=max_length)  # type: ignore[operator]
    return {k: out[k] for k in ("input_ids", "token_type_ids") if k in out}


@torch.no_grad()
def predict_logits(
    model: TextModel, encoded: list[list[int]], pad_id: int, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """Logits of every sequence, in order, batched by length. On out-of-memory the batch is halved
    and the same sequences are run again (logged), down to one sequence.

    Raises:
        TrainingResourceError: out of memory even for one sequence.
    """
    model.train(False)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # length-sorted: little padding
    out: list[np.ndarray] = [np.empty(0)] * len(encoded)
    start = 0
    while start < len(order):
        idx = order[start : start + batch_size]
        try:
            logits = model.logits(collate([encoded[i] for i in idx], pad_id, device)).float().cpu().numpy()
        except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
            message = oom_message(err)
        else:
            for i, row in zip(idx, logits):
                out[i] = row
            start += len(idx)
            continue
        free_cached_memory()  # outside the except block: the traceback's activations are released
        if batch_size <= 1:
            raise TrainingResourceError(
                f"out of memory evaluating one sequence of {len(encoded[idx[0]])} tokens: {message}. "
                "Use a smaller model.max_length or base model, or a device with more memory."
            )
        batch_size = max(1, min(batch_size, len(idx)) // 2)
        log.warning("OOM evaluating a batch of %d: going on with batches of %d", len(idx), batch_size)
    return np.stack(out)


def evaluate(
    model: TextModel, encoded: list[list[int]], labels: list, pad_id: int, device: torch.device, tune: bool = False
) -> dict[str, float]:
    """The task's metrics and the loss on these rows. With `tune` (validation) a multi-label
    model's decision thresholds are tuned on them first and kept on the model (saved with it)."""
    logits = predict_logits(model, encoded, pad_id, device)
    head = model.head()
    if tune and model.task == "multilabel":
        head = head.with_tuned_thresholds(labels, logits)
        model.thresholds = list(head.thresholds or ())
    metrics = head.metrics(labels, logits)
    with torch.no_grad():
        t_logits = torch.from_numpy(logits).to(device)
        metrics["loss"] = float(model.loss(t_logits, torch.tensor(labels, device=device)))
    return metrics


def param_groups(model: TextModel, hparams: Hyperparams, head_multiplier: float) -> list[dict]:
    """Backbone and new head (pooler, classifier, cutpoints) as separate groups: the freshly
    initialised head learns `head_multiplier` times faster; biases and norms get no decay."""
    head_ids = {id(p) for p in model.head_parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head_ids, p.ndim >= 2), []).append(p)
    return [
        {
            "params": params,
            "lr": hparams.learning_rate * (head_multiplier if is_head else 1.0),
            "weight_decay": hparams.weight_decay if decays else 0.0,
        }
        for (is_head, decays), params in sorted(groups.items())
    ]


def is_out_of_memory(err: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA, also raised by the caching allocator) or a RuntimeError that
    says so (older torch, cuDNN/cuBLAS workspace failures, other backends)."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def oom_message(err: RuntimeError) -> str:
    """The first line of an out-of-memory error (for the log and the final error); any other
    error is raised again."""
    if not is_out_of_memory(err):
        raise err
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def free_cached_memory() -> None:
    """Give the CUDA caching allocator's free blocks back after an out-of-memory error."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Objective(Protocol):
    """What a training step minimises: `forward` gives the logits of a batch, `loss` the loss of
    those logits against the batch's targets (labels; a student's: training row numbers)."""

    def forward(self, model: TextModel, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def loss(self, model: TextModel, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


class LabelObjective:
    """The task's loss against the labels (every trial)."""

    def forward(self, model: TextModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.logits(batch)

    def loss(self, model: TextModel, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return model.loss(logits, targets)


LABELS = LabelObjective()


def accumulate_gradients(
    model: TextModel,
    batch: dict[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    micro_batch: int,
    fast: accel.FastPath,
    scaler: torch.amp.GradScaler,
    objective: Objective = LABELS,
) -> torch.Tensor:
    """Forward and backward over `batch` in slices of `micro_batch` samples, adding into `.grad`.

    Each slice's mean loss is weighted by its share of the batch, so the summed gradients are
    those of the whole batch's mean loss (the effective batch stays `len(labels)`); the slices
    keep the batch's padding width, so each sample sees the same computation. Returns the
    whole batch's mean loss, detached.
    """
    n = int(labels.shape[0])
    if micro_batch >= n:  # the usual case: exactly the operations of a plain training step
        with accel.autocast(fast):
            logits = objective.forward(model, batch)
        loss = objective.loss(model, logits.float(), labels)
        scaler.scale(loss).backward()
        return loss.detach()
    total = torch.zeros((), device=labels.device)
    for start in range(0, n, micro_batch):
        part = slice(start, start + micro_batch)
        with accel.autocast(fast):
            logits = objective.forward(model, {k: v[part] for k, v in batch.items()})
        loss = objective.loss(model, logits.float(), labels[part]) * (len(labels[part]) / n)
        scaler.scale(loss).backward()
        total += loss.detach()
    return total


def backward_with_oom_backoff(
    model: TextModel,
    batch: dict[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    micro_batch: int,
    fast: accel.FastPath,
    scaler: torch.amp.GradScaler,
    objective: Objective = LABELS,
) -> tuple[torch.Tensor, int]:
    """Zero the gradients and run `accumulate_gradients`; on out-of-memory halve the micro-batch
    (accumulating more slices, so the effective batch is unchanged) and redo the whole step.

    Returns (the batch's mean loss, the micro-batch size that fitted; keep using it).
    Raises:
        TrainingResourceError: out of memory even with one sample per micro-batch.
    """
    n = int(labels.shape[0])
    while True:
        optimizer.zero_grad(set_to_none=True)
        try:
            loss = accumulate_gradients(model, batch, labels, micro_batch=micro_batch, fast=fast, scaler=scaler,
                                        objective=objective)  # fmt: skip
        except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
            message = oom_message(err)
        else:
            return loss, micro_batch
        # Outside the except block: the traceback (and the activations it holds) is released.
        optimizer.zero_grad(set_to_none=True)
        free_cached_memory()
        if micro_batch <= 1:
            raise TrainingResourceError(
                f"out of memory at micro-batch 1 (batch {n}, max_length {batch['input_ids'].shape[1]}): "
                f"{message}. Use a smaller model.max_length or base model, or a device with more memory."
            )
        smaller = max(1, min(micro_batch, n) // 2)
        log.warning(
            "OOM at batch %d: retrying with batch %d x %d accumulation steps", min(micro_batch, n), smaller,
            -(-n // smaller),
        )  # fmt: skip
        micro_batch = smaller


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return fn


def linear_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The trials' LR schedule: linear warm-up over `warmup_steps`, then linear decay to 0 at
    `total_steps`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup_steps, total_steps))


def checkpoint_size_estimate(model: TextModel, optimizer: torch.optim.Optimizer) -> int:
    """Bytes a checkpoint will take: the weights plus every tensor in the optimizer state (AdamW:
    two moments per trainable parameter), plus 1 MiB for RNG states, pickling and meta.json."""
    weights = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    state = sum(
        v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    return weights + state + (1 << 20)


def ensure_checkpoint_space(folder: Path, model: TextModel, optimizer: torch.optim.Optimizer) -> None:
    """DiskSpaceError before a checkpoint is written if it cannot fit. The previous checkpoint
    stays on disk until the new one is complete, so the whole new size must be free."""
    ensure_free_space(folder, checkpoint_size_estimate(model, optimizer), "a training checkpoint")


def save_checkpoint(
    root: Path,
    *,
    model: TextModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    extra: dict,
) -> Path:
    """Write a complete checkpoint as a new version of `root`, synchronously; return its folder.

    Raises:
        DiskSpaceError: too little free disk (checked before anything is written).
    """
    ensure_checkpoint_space(root, model, optimizer)
    return write_snapshot(
        root, take_snapshot(model=model, optimizer=optimizer, scheduler=scheduler, step=step, extra=extra)
    )


def _restore(folder: Path, model: TextModel, optimizer: torch.optim.Optimizer, scheduler: object) -> None:
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    # weights_only=True: only tensors and plain containers are unpickled.
    state = torch.load(folder / TRAINER_STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])  # type: ignore[attr-defined]
    random.setstate(_as_tuple(state["rng_python"]))  # type: ignore[arg-type]
    kind, keys, *rest = state["rng_numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["rng_torch"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def _as_tuple(x: object) -> object:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def target_scale(values: list[float]) -> tuple[float, float]:
    """(mean, std) of regression targets: a regression model learns them standardised (std 1.0
    when the values do not vary)."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std())
    return float(arr.mean()), std if std > 0 else 1.0


@dataclass
class _Session:
    """Everything one trial trains with, built once by `_setup`."""

    fast: accel.FastPath
    device: torch.device
    model: TextModel
    tokenizer: object
    pad_id: int
    train_enc: list[list[int]]
    val_enc: list[list[int]]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]


def _setup(cfg: RunConfig, hparams: Hyperparams, train: SplitData, validation: SplitData, seed: int) -> _Session:
    """Choose the fast path, build the model, tokenize both splits, make optimizer and schedule."""
    from transformers import AutoTokenizer

    fast = accel.select_fast_path(cfg.train, accel.probe_capabilities(cfg.train.device))
    log.info("%s", fast.describe())
    accel.apply_global_settings(fast)
    device = torch.device(fast.device)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(cfg.model.base))
    seed_everything(seed)
    scale = target_scale(train.labels) if cfg.task.type == "regression" else None
    model = build_model(
        task=cfg.task.type,
        labels=cfg.task.labels,
        base=cfg.model.base,
        freeze_embeddings=cfg.model.freeze_embeddings,
        frozen_layers=cfg.model.frozen_layers,
        head=cfg.model.head,
        tokenizer=tokenizer,  # a decoder's gets its padding token here
        dropout=cfg.train.dropout,
        label_smoothing=cfg.train.label_smoothing,
        scale=scale,
    ).to(device)
    accel.maybe_compile(model.hf, fast)
    optimizer = torch.optim.AdamW(
        param_groups(model, hparams, cfg.train.head_lr_multiplier), lr=hparams.learning_rate, **accel.adamw_kwargs(fast)
    )
    warmup = int(hparams.warmup_ratio * hparams.max_steps)
    return _Session(
        fast=fast,
        device=device,
        model=model,
        tokenizer=tokenizer,
        pad_id=int(tokenizer.pad_token_id or 0),
        train_enc=encode(tokenizer, train.inputs, cfg.model.max_length),
        val_enc=encode(tokenizer, validation.inputs, cfg.model.max_length),
        optimizer=optimizer,
        scheduler=linear_schedule(optimizer, warmup, hparams.max_steps),
        scaler=accel.grad_scaler(fast),  # disabled (a pass-through) unless fp16
    )


@dataclass
class _Progress:
    """The loop's state besides the tensors: restored from, and saved with, each checkpoint."""

    step: int = 0
    best_value: float | None = None
    best_step: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    best_dir: Path | None = None

    def checkpoint_extra(self) -> dict:
        return {"best_value": self.best_value, "best_step": self.best_step, "best_metrics": self.best_metrics,
                "history": self.history}  # fmt: skip


def _resume(session: _Session, found: Checkpoint | None, best_root: Path) -> _Progress:
    """Restore the checkpoint `found` (the checkpoint wins over the fresh initialisation; the
    architecture comes from the config, which the trial fixes)."""
    if found is None:
        return _Progress()
    folder, meta = found.folder, found.meta
    _restore(folder, session.model, session.optimizer, session.scheduler)
    if meta.get("grad_scaler"):
        session.scaler.load_state_dict(meta["grad_scaler"])
    log.info("resumed from %s at step %d (checkpoint wins over fresh init)", folder, meta["step"])
    # The best model as of the checkpoint; a newer one (saved before the kill) is the fallback: the
    # replayed steps make the same choices and save it again.
    best = best_root / step_version(meta["best_step"])
    best_dir = best if best.is_dir() else VersionedDir(best_root).latest()
    return _Progress(meta["step"], meta["best_value"], meta["best_step"], meta["best_metrics"], meta["history"],
                     best_dir)  # fmt: skip


def _batches(
    session: _Session, cfg: RunConfig, hparams: Hyperparams, train: SplitData, seed: int, start: int, rows: bool
):
    """The batches from `start` on, with their labels (with `rows`: their training row numbers)."""
    fast = session.fast
    order = (
        accel.LengthBucketedOrder([len(e) for e in session.train_enc], hparams.batch_size, seed)
        if fast.length_bucketing
        else partial(batch_indices, n=len(session.train_enc), batch_size=hparams.batch_size, seed=seed)
    )
    return accel.train_batches(
        fast,
        steps=range(start, hparams.max_steps),
        order=order,
        encoded=session.train_enc,
        labels=list(range(len(train))) if rows else train.labels,
        collate=partial(
            collate, pad_id=session.pad_id, pad_to_multiple=fast.pad_to_multiple, max_width=cfg.model.max_length
        ),  # fmt: skip
    )


def optimizer_step(
    model: TextModel,
    batch: dict[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    fast: accel.FastPath,
    micro_batch: int,
    step: int,
    objective: Objective = LABELS,
) -> tuple[float, int]:
    """One training step: forward and backward with the out-of-memory back-off, gradients clipped
    at 1.0, the optimizer and the LR schedule stepped. Returns (the batch's mean loss, the
    micro-batch size that fitted; keep using it).

    Raises:
        TrainingResourceError: out of memory even at micro-batch 1, or in the optimizer step.
    """
    loss, micro_batch = backward_with_oom_backoff(
        model, batch, labels, optimizer=optimizer, micro_batch=micro_batch, fast=fast, scaler=scaler,
        objective=objective,
    )  # fmt: skip
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    scaler.unscale_(optimizer)  # clip the true gradients
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    try:
        scaler.step(optimizer)
    except RuntimeError as err:  # a smaller batch cannot help: the state is per parameter
        raise TrainingResourceError(
            f"out of memory in the optimizer step at step {step + 1} (its state is kept per trainable "
            f"parameter, {sum(p.numel() for p in trainable):,} here): {oom_message(err)}. Use a smaller "
            "base model, freeze more layers (model.frozen_layers) or a device with more memory."
        ) from err
    scaler.update()
    scheduler.step()
    return float(loss), micro_batch


def _evaluate_and_keep_best(
    session: _Session, cfg: RunConfig, validation: SplitData, progress: _Progress, best_root: Path, keep_last: bool
) -> dict[str, float]:
    """Validate at `progress.step`; a new best model (with `keep_last`: every model validated, so
    the last one is kept) is saved as a version of `best_root`."""
    with accel.autocast(session.fast):
        metrics = evaluate(session.model, session.val_enc, validation.labels, session.pad_id, session.device, tune=True)
    progress.history.append({"step": progress.step, **metrics})
    log.info(
        "step %d/%d: validation %s", progress.step, cfg.train.max_steps, {k: round(v, 4) for k, v in metrics.items()}
    )
    value, sign = metrics[cfg.hpo.metric], (1 if cfg.hpo.direction == "maximize" else -1)
    if keep_last or progress.best_value is None or sign * value > sign * progress.best_value:
        progress.best_value, progress.best_step, progress.best_metrics = value, progress.step, metrics
        ensure_free_space(best_root, checkpoint_size_estimate(session.model, session.optimizer), "the best model")
        progress.best_dir = VersionedDir(best_root).write(
            step_version(progress.step), lambda folder: save_model(session.model, session.tokenizer, folder)
        )
    return metrics


class _CheckpointPolicy:
    """When to checkpoint: every `checkpoint_every` steps but no sooner than the fast path's
    `checkpoint_min_seconds` after the previous one, and at once when a stop is requested."""

    def __init__(self, cfg: RunConfig, fast: accel.FastPath, max_steps: int) -> None:
        self.every, self.min_seconds, self.max_steps = (
            cfg.train.checkpoint_every,
            fast.checkpoint_min_seconds,
            max_steps,
        )
        self.last = time.monotonic()

    def due(self, step: int, stopping: bool) -> bool:
        regular = step % self.every == 0 and step < self.max_steps
        if stopping or (regular and time.monotonic() - self.last >= self.min_seconds):
            self.last = time.monotonic()
            return True
        return False


def train_model(
    *,
    cfg: RunConfig,
    hparams: Hyperparams,
    train: SplitData,
    validation: SplitData,
    out_dir: Path,
    seed: int,
    resume_dir: Path | Checkpoint | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    log_values: Callable[[int, dict[str, float]], None] | None = None,
    stop_after_step: int | None = None,
    checkpoint_tags: dict | None = None,
    stop_requested: Callable[[], bool] | None = None,
    keep: Literal["best", "last"] = "best",
    objective: Callable[[torch.device], Objective] | None = None,
) -> TrainResult:
    """Fine-tune `cfg.model.base` on `train`; keep the best validation model in `out_dir/best`
    (`keep` 'last': the model of the last step, for a refit whose validation split is part of its
    training data).

    Resumes from `resume_dir` (a checkpoint the caller chose, or a folder whose newest intact
    checkpoint is taken) when there is one (the architecture and all
    training state come from the checkpoint; `hparams` must be the trial's own). Checkpoints go
    to `out_dir/checkpoint` every `cfg.train.checkpoint_every` steps (no sooner than the fast path's
    `checkpoint_min_seconds` after the previous one; written in the background on CUDA), and at once when
    `stop_requested()` turns true (then TrainingInterrupted is raised). `stop_after_step` ends the
    loop early (used to simulate interruption in tests). `on_checkpoint(folder)` gets each
    checkpoint's folder once it is complete on disk. `objective(device)` builds what the steps
    minimise instead of the task's loss (a student's distillation loss: its batches carry
    training row numbers); validation always uses the task's metrics.

    Returns:
        TrainResult with the best validation metrics and where the best model is.
    Raises:
        ModelLoadError: the base model cannot be loaded. Anything `on_eval` raises propagates.
    """
    t0 = time.perf_counter()
    session = _setup(cfg, hparams, train, validation, seed)
    ckpt_root, best_root = out_dir / CHECKPOINT_DIR, out_dir / BEST_DIR
    found = resume_dir if isinstance(resume_dir, Checkpoint) else latest_checkpoint([resume_dir])
    progress = _resume(session, found, best_root)
    resumed_from = progress.step
    step_objective = LABELS if objective is None else objective(session.device)
    batches = _batches(session, cfg, hparams, train, seed, progress.step, rows=objective is not None)
    # On CUDA the checkpoint is written (and on_checkpoint called) by a background thread while
    # training goes on; the loop only waits for the copy of the state to CPU memory.
    writer = CheckpointWriter(asynchronous=session.fast.async_checkpoint, on_written=on_checkpoint)
    policy = _CheckpointPolicy(cfg, session.fast, hparams.max_steps)
    micro_batch = hparams.batch_size  # halved on out-of-memory, then kept for the rest of the run
    try:
        while progress.step < hparams.max_steps:
            session.model.train(True)
            batch, labels = next(batches)
            loss, micro_batch = optimizer_step(
                session.model, batch, labels, optimizer=session.optimizer, scheduler=session.scheduler,
                scaler=session.scaler, fast=session.fast, micro_batch=micro_batch, step=progress.step,
                objective=step_objective,
            )  # fmt: skip
            progress.step += 1
            step = progress.step
            if log_values is not None:
                log_values(step, {"train/loss": loss, "train/lr": float(session.scheduler.get_last_lr()[0])})
            if step % cfg.train.eval_every == 0 or step == hparams.max_steps:
                metrics = _evaluate_and_keep_best(session, cfg, validation, progress, best_root, keep == "last")
                if log_values is not None:
                    log_values(step, {f"val/{k}": v for k, v in metrics.items()})
                if on_eval is not None:
                    on_eval(step, metrics)
            # A stop request (SIGTERM / SIGUSR1 before preemption) forces a checkpoint now.
            stopping = stop_requested is not None and stop_requested() and step < hparams.max_steps
            if policy.due(step, stopping):
                ensure_checkpoint_space(ckpt_root, session.model, session.optimizer)  # nothing half-written
                extra = {**(checkpoint_tags or {}), "seed": seed, "hparams": asdict(hparams),
                         **progress.checkpoint_extra(), "grad_scaler": session.scaler.state_dict()}  # fmt: skip
                writer.save(ckpt_root, model=session.model, optimizer=session.optimizer,
                            scheduler=session.scheduler, step=step, extra=extra)  # fmt: skip
            if stopping:
                writer.wait()  # the checkpoint must be on disk before the process exits
                raise TrainingInterrupted(f"stop requested: checkpoint saved at step {step}", step=step)
            if stop_after_step is not None and step >= stop_after_step:
                break
    except BaseException:
        writer.close(quiet=True)  # the last checkpoint is complete on disk, also when training failed
        raise
    writer.close()
    return TrainResult(
        metrics=progress.best_metrics,
        best_step=progress.best_step,
        model_dir=str(progress.best_dir or best_root),
        steps_run=progress.step - resumed_from,
        resumed_from_step=resumed_from,
        seconds=time.perf_counter() - t0,
        history=progress.history,
        micro_batch_size=micro_batch,
    )
