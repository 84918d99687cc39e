"""Training checkpoints: a consistent CPU snapshot of all training state, written atomically with
the SHA-256 of each file computed from the bytes as they are written (no second read).

A trial's checkpoints live in a `VersionedDir` (trainflow/core/io.py): `<root>/step-NNNNNNNN/` folders
and a `LATEST` pointer. A new checkpoint is complete and fsynced before the pointer names it and
the previous one is deleted only after that, so a kill at any moment of a save leaves at least
one intact checkpoint; readers (trainflow/training/resume.py) take the newest intact one.

A checkpoint is taken in two parts so that a GPU need not wait for the disk:
  take_snapshot()   copies weights, optimizer and scheduler state and the RNG states to CPU
                    memory (page-locked buffers reused between checkpoints on CUDA); the training
                    loop waits only for this copy.
  write_snapshot()  serializes, hashes and writes a new version of the checkpoint folder.
`CheckpointWriter` runs the write (and the caller's `on_written`, e.g. metaflow's save) in one
background thread when asked to; `wait()` re-raises any error of a background write, and a new
checkpoint waits for the previous one, so at most one write is in flight and they complete in
order. Nothing here imports metaflow.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from trainflow.core.io import VersionedDir
from trainflow.core.layout import CHECKPOINT_META, TRAINER_STATE, WEIGHTS, step_version

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """All training state at one step, in CPU memory that training no longer writes to."""

    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    extra: dict[str, Any]


class _Buffers:
    """Page-locked CPU tensors reused between snapshots (CUDA only): a device-to-host copy into
    pinned memory runs at full PCIe speed and needs no allocation after the first checkpoint."""

    def __init__(self) -> None:
        self._by_key: dict[str, torch.Tensor] = {}

    def copy(self, key: str, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if t.device.type != "cuda":
            return t.to("cpu", copy=True)
        buf = self._by_key.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = self._by_key[key] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)
        return buf


def _copy_tree(obj: Any, buffers: _Buffers, key: str) -> Any:
    if isinstance(obj, torch.Tensor):
        return buffers.copy(key, obj)
    if isinstance(obj, dict):
        return {k: _copy_tree(v, buffers, f"{key}/{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_copy_tree(v, buffers, f"{key}/{i}") for i, v in enumerate(obj))
    return obj


def take_snapshot(
    *,
    model: Any,  # anything with state_dict() of tensors: a TextModel or an nn.Module
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    extra: dict[str, Any],
    buffers: _Buffers | None = None,
) -> Snapshot:
    """Copy the training state to CPU memory; returns once the copy is complete."""
    buffers = buffers or _Buffers()
    weights = {k: buffers.copy(f"w/{k}", v).contiguous() for k, v in model.state_dict().items()}
    np_state = np.random.get_state()
    state = {
        "optimizer": _copy_tree(optimizer.state_dict(), buffers, "opt"),
        "scheduler": scheduler.state_dict(),
        "rng_python": random.getstate(),
        "rng_numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),  # type: ignore[index]
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the non-blocking copies into pinned memory have landed
    return Snapshot(step=step, weights=weights, state=state, extra=copy.deepcopy(extra))  # history grows on


def _write_hashed(path: Path, data: bytes | memoryview) -> str:
    with path.open("wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def write_snapshot(root: Path, snap: Snapshot) -> Path:
    """Write `snap` as a new version `step-NNNNNNNN` of the checkpoint folder `root`; return it.

    meta.json holds the step, `extra`, the torch version and each file's SHA-256, hashed from the
    serialized bytes (the same bytes that are written)."""

    def fill(tmp: Path) -> None:
        files = {WEIGHTS: _write_hashed(tmp / WEIGHTS, safetensors_bytes(snap.weights))}
        buf = io.BytesIO()
        torch.save(snap.state, buf)
        files[TRAINER_STATE] = _write_hashed(tmp / TRAINER_STATE, buf.getbuffer())
        meta = {"step": snap.step, **snap.extra, "torch": torch.__version__, "files": files}
        (tmp / CHECKPOINT_META).write_text(json.dumps(meta, indent=2, sort_keys=True))

    return VersionedDir(root).write(step_version(snap.step), fill)


class CheckpointWriter:
    """Writes snapshots in order, in a background thread when `asynchronous`.

    `on_written(folder)` runs after each checkpoint version is complete, with that version's
    folder (in the writer's thread when asynchronous). An error in a background write is raised by the next `save` or `wait`.
    """

    def __init__(self, *, asynchronous: bool, on_written: Callable[[Path], None] | None = None) -> None:
        self.asynchronous = asynchronous
        self._on_written = on_written
        self._buffers = _Buffers()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if asynchronous else None
        self._pending: Future[None] | None = None
        self._lock = threading.Lock()

    def _write(self, root: Path, snap: Snapshot) -> None:
        folder = write_snapshot(root, snap)
        if self._on_written is not None:
            self._on_written(folder)

    def save(self, root: Path, **state: Any) -> None:
        """Snapshot now (`take_snapshot` keywords) and write it as a new version of the checkpoint
        folder `root`, in the background if asynchronous."""
        self.wait()  # one write in flight at most; the pinned buffers are free again
        snap = take_snapshot(buffers=self._buffers, **state)
        if self._pool is None:
            self._write(root, snap)
            return
        with self._lock:
            self._pending = self._pool.submit(self._write, root, snap)

    def wait(self) -> None:
        """Block until the last write is complete; re-raise its error."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self, *, quiet: bool = False) -> None:
        """Wait for the last write, then stop the thread. `quiet`: log a write error instead of
        raising it (used while another exception is already propagating)."""
        try:
            self.wait()
        except Exception:
            if not quiet:
                raise
            log.exception("writing the last checkpoint failed")
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
