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

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from trainflow import accel
from trainflow.checkpoints import (
    META_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    CheckpointWriter,
    atomic_replace_dir,
    sha256_file,
    take_snapshot,
    write_snapshot,
)
from trainflow.config import RunConfig
from trainflow.data import SplitData
from trainflow.diskspace import ensure_free_space
from trainflow.errors import TrainingInterrupted, TrainingResourceError
from trainflow.modeling import TextModel, build_model, compute_metrics, predict_classes, save_model

log = logging.getLogger(__name__)

__all__ = ["META_FILE", "STATE_FILE", "WEIGHTS_FILE", "save_checkpoint", "read_checkpoint_meta", "train_model"]


@dataclass(frozen=True)
class Hyperparams:
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    batch_size: int
    max_steps: int


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


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the batch at `step`: epoch e is a seeded permutation of range(n)."""
    per_epoch = math.ceil(n / batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[pos * batch_size : (pos + 1) * batch_size].tolist()


def collate(
    encoded: list[list[int]], pad_id: int, device: torch.device, pad_to_multiple: int = 1, max_width: int = 0
) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad to the longest sequence in the batch, not to max_length (rounded up
    to a multiple of `pad_to_multiple`, but not past `max_width` when that is set)."""
    width = max(len(e) for e in encoded)
    if pad_to_multiple > 1:
        rounded = -(-width // pad_to_multiple) * pad_to_multiple
        width = min(rounded, max(width, max_width)) if max_width else rounded
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def encode(tokenizer: object, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]  # type: ignore[operator]


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
    model: TextModel, encoded: list[list[int]], labels: list[int], pad_id: int, device: torch.device
) -> dict[str, float]:
    logits = predict_logits(model, encoded, pad_id, device)
    cut = model.cutpoint_values()
    preds = predict_classes(model.task, logits, None if cut is None else np.asarray(cut))
    metrics = compute_metrics(model.task, np.asarray(labels), preds, len(model.labels))
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


def accumulate_gradients(
    model: TextModel,
    batch: dict[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    micro_batch: int,
    fast: accel.FastPath,
    scaler: torch.amp.GradScaler,
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
            logits = model.logits(batch)
        loss = model.loss(logits.float(), labels)
        scaler.scale(loss).backward()
        return loss.detach()
    total = torch.zeros((), device=labels.device)
    for start in range(0, n, micro_batch):
        part = slice(start, start + micro_batch)
        with accel.autocast(fast):
            logits = model.logits({k: v[part] for k, v in batch.items()})
        loss = model.loss(logits.float(), labels[part]) * (len(labels[part]) / n)
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
            loss = accumulate_gradients(model, batch, labels, micro_batch=micro_batch, fast=fast, scaler=scaler)
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
    stays on disk until the new one is renamed into place, so the whole new size must be free."""
    ensure_free_space(folder, checkpoint_size_estimate(model, optimizer), "a training checkpoint")


def save_checkpoint(
    folder: Path,
    *,
    model: TextModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    extra: dict,
) -> None:
    """Write a complete checkpoint to `folder` atomically (temp folder, then rename), synchronously.

    Raises:
        DiskSpaceError: too little free disk (checked before anything is written).
    """
    ensure_checkpoint_space(folder, model, optimizer)
    write_snapshot(folder, take_snapshot(model=model, optimizer=optimizer, scheduler=scheduler, step=step, extra=extra))


def read_checkpoint_meta(folder: Path | None) -> dict | None:
    """Return meta.json of a complete, intact checkpoint, or None (with a warning) otherwise."""
    if folder is None or not (folder / META_FILE).is_file():
        return None
    try:
        meta = json.loads((folder / META_FILE).read_text())
        for name, digest in meta["files"].items():
            if not (folder / name).is_file() or sha256_file(folder / name) != digest:
                log.warning("checkpoint %s: %s is missing or corrupt; ignoring this checkpoint", folder, name)
                return None
    except (json.JSONDecodeError, KeyError, OSError) as err:
        log.warning("checkpoint %s: unreadable meta.json (%s); ignoring this checkpoint", folder, err)
        return None
    return meta


def _restore(folder: Path, model: TextModel, optimizer: torch.optim.Optimizer, scheduler: object) -> None:
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    # weights_only=True: only tensors and plain containers are unpickled.
    state = torch.load(folder / STATE_FILE, weights_only=True)
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


def train_model(
    *,
    cfg: RunConfig,
    hparams: Hyperparams,
    train: SplitData,
    validation: SplitData,
    out_dir: Path,
    seed: int,
    resume_dir: Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    log_values: Callable[[int, dict[str, float]], None] | None = None,
    stop_after_step: int | None = None,
    checkpoint_tags: dict | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> TrainResult:
    """Fine-tune `cfg.model.base` on `train`; keep the best validation model in `out_dir/best`.

    Resumes from `resume_dir` when it holds an intact checkpoint (the architecture and all
    training state come from the checkpoint; `hparams` must be the trial's own). Checkpoints go
    to `out_dir/checkpoint` every `cfg.train.checkpoint_every` steps (no sooner than the fast path's
    `checkpoint_min_seconds` after the previous one; written in the background on CUDA), and at once when
    `stop_requested()` turns true (then TrainingInterrupted is raised). `stop_after_step` ends the
    loop early (used to simulate interruption in tests).

    Returns:
        TrainResult with the best validation metrics and where the best model is.
    Raises:
        ModelLoadError: the base model cannot be loaded. Anything `on_eval` raises propagates.
    """
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    fast = accel.select_fast_path(cfg.train, accel.probe_capabilities(cfg.train.device))
    log.info("training fast path:\n%s", fast.describe())
    accel.apply_global_settings(fast)
    device = torch.device(fast.device)
    seed_everything(seed)
    model = build_model(
        task=cfg.task.type,
        labels=cfg.task.labels,
        base=cfg.model.base,
        freeze_embeddings=cfg.model.freeze_embeddings,
        frozen_layers=cfg.model.frozen_layers,
    ).to(device)
    accel.maybe_compile(model.hf, fast)
    from trainflow.modeling import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(cfg.model.base))
    pad_id = int(tokenizer.pad_token_id or 0)
    train_enc = encode(tokenizer, train.texts, cfg.model.max_length)
    val_enc = encode(tokenizer, validation.texts, cfg.model.max_length)

    optimizer = torch.optim.AdamW(
        param_groups(model, hparams, cfg.train.head_lr_multiplier), lr=hparams.learning_rate, **accel.adamw_kwargs(fast)
    )
    scaler = accel.grad_scaler(fast)  # disabled (a pass-through) unless fp16
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    warmup = int(hparams.warmup_ratio * hparams.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, hparams.max_steps))

    ckpt_dir = out_dir / "checkpoint"
    best_dir = out_dir / "best"
    step, best_value, best_step, best_metrics = 0, None, -1, {}
    history: list[dict[str, float]] = []
    meta = read_checkpoint_meta(resume_dir)
    if meta is not None and resume_dir is not None:
        _restore(resume_dir, model, optimizer, scheduler)
        step, best_value, best_step = meta["step"], meta["best_value"], meta["best_step"]
        best_metrics, history = meta["best_metrics"], meta["history"]
        if meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        log.info("resumed from %s at step %d (checkpoint wins over fresh init)", resume_dir, step)
    resumed_from = step

    metric, sign = cfg.hpo.metric, (1 if cfg.hpo.direction == "maximize" else -1)
    batches = accel.train_batches(
        fast,
        steps=range(step, hparams.max_steps),
        order=accel.LengthBucketedOrder([len(e) for e in train_enc], hparams.batch_size, seed)
        if fast.length_bucketing
        else partial(batch_indices, n=len(train_enc), batch_size=hparams.batch_size, seed=seed),
        encoded=train_enc,
        labels=train.labels,
        collate=partial(collate, pad_id=pad_id, pad_to_multiple=fast.pad_to_multiple, max_width=cfg.model.max_length),
    )
    # On CUDA the checkpoint is written (and on_checkpoint called) by a background thread while
    # training goes on; the loop only waits for the copy of the state to CPU memory.
    writer = CheckpointWriter(asynchronous=fast.async_checkpoint, on_written=on_checkpoint)
    last_checkpoint = time.monotonic()
    micro_batch = hparams.batch_size  # halved on out-of-memory, then kept for the rest of the run
    try:
        while step < hparams.max_steps:
            model.train(True)
            batch, labels = next(batches)
            loss, micro_batch = backward_with_oom_backoff(
                model, batch, labels, optimizer=optimizer, micro_batch=micro_batch, fast=fast, scaler=scaler
            )
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
            step += 1
            if log_values is not None:
                log_values(step, {"train/loss": float(loss), "train/lr": float(scheduler.get_last_lr()[0])})
            if step % cfg.train.eval_every == 0 or step == hparams.max_steps:
                with accel.autocast(fast):
                    metrics = evaluate(model, val_enc, validation.labels, pad_id, device)
                history.append({"step": step, **metrics})
                log.info(
                    "step %d/%d: validation %s", step, hparams.max_steps, {k: round(v, 4) for k, v in metrics.items()}
                )
                if log_values is not None:
                    log_values(step, {f"val/{k}": v for k, v in metrics.items()})
                if best_value is None or sign * metrics[metric] > sign * best_value:
                    best_value, best_step, best_metrics = metrics[metric], step, metrics
                    tmp = best_dir.with_name("best.tmp")
                    if tmp.exists():
                        shutil.rmtree(tmp)
                    ensure_free_space(best_dir, checkpoint_size_estimate(model, optimizer), "the best model")
                    save_model(model, tokenizer, tmp)
                    atomic_replace_dir(tmp, best_dir)
                if on_eval is not None:
                    on_eval(step, metrics)
            # A stop request (SIGTERM / SIGUSR1 before preemption) forces a checkpoint now.
            stopping = stop_requested is not None and stop_requested() and step < hparams.max_steps
            due = step % cfg.train.checkpoint_every == 0 and step < hparams.max_steps
            if (due and time.monotonic() - last_checkpoint >= fast.checkpoint_min_seconds) or stopping:
                last_checkpoint = time.monotonic()
                ensure_checkpoint_space(ckpt_dir, model, optimizer)  # before the snapshot: nothing half-written
                writer.save(
                    ckpt_dir,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    step=step,
                    extra={
                        **(checkpoint_tags or {}),
                        "seed": seed,
                        "hparams": asdict(hparams),
                        "best_value": best_value,
                        "best_step": best_step,
                        "best_metrics": best_metrics,
                        "history": history,
                        "grad_scaler": scaler.state_dict(),  # {} unless fp16
                    },
                )
                if stopping:
                    writer.wait()  # the checkpoint must be on disk before the process exits
            if stopping:
                raise TrainingInterrupted(f"stop requested: checkpoint saved at step {step}", step=step)
            if stop_after_step is not None and step >= stop_after_step:
                break
    except BaseException:
        writer.close(quiet=True)  # the last checkpoint is complete on disk, also when training failed
        raise
    writer.close()
    return TrainResult(
        metrics=best_metrics,
        best_step=best_step,
        model_dir=str(best_dir),
        steps_run=step - resumed_from,
        resumed_from_step=resumed_from,
        seconds=time.perf_counter() - t0,
        history=history,
        micro_batch_size=micro_batch,
    )


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint folder (for comparing a resumed run with an uninterrupted one)."""
    return load_file(str(folder / WEIGHTS_FILE))


def cpu_threads(requested: int, workers: int) -> int:
    return requested or max(1, (os.cpu_count() or 1) // workers)
