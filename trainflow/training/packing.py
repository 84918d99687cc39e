"""Trial packing: several HPO workers training at once on one GPU (`hpo.workers_per_gpu`).

The flow's train step runs one task per GPU slot; a slot task starts `workers_per_gpu` worker
processes (spawned: a fresh CUDA context each), all on the slot's GPU, all asking trials from the
same study. Which GPU: on a machine whose tasks see every GPU (a local multi-GPU box), slot s gets
visible GPU s mod their number; where the scheduler gives the task its own GPUs (SLURM, Kubernetes:
the task declares `compute.gpus`), the task's first GPU. Packed workers keep their checkpoints in
the run folder (as every worker does); a resumed or retried slot task continues each worker's
trial from there (metaflow-checkpoint's copies are made only for unpacked workers).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

from trainflow.core.errors import WorkerProcessError

log = logging.getLogger(__name__)


def slots(n_workers: int, workers_per_gpu: int) -> list[list[int]]:
    """The workers of each GPU slot, in order: [[0, 1, 2, 3], [4, 5, 6, 7]] for 8 workers, 4 per GPU."""
    return [list(range(s, min(n_workers, s + workers_per_gpu))) for s in range(0, n_workers, workers_per_gpu)]


def visible_gpus(environ: dict[str, str] | None = None) -> list[str] | None:
    """The GPU ids this task may use (CUDA_VISIBLE_DEVICES), or None when it is not set."""
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    return None if value is None else [v for v in value.split(",") if v.strip()]


def assign_gpu(slot: int, visible: Sequence[str], declared: int) -> str | None:
    """The GPU id for GPU slot `slot`: visible[slot % n] when the task sees more GPUs than it
    declared (nobody pinned it), else the task's first GPU; None without GPUs."""
    if not visible:
        return None
    if len(visible) > max(1, declared):
        return visible[slot % len(visible)]
    return visible[0]


def all_gpu_ids() -> list[str]:
    """The GPUs this process sees: CUDA_VISIBLE_DEVICES when set, else every device torch finds."""
    pinned = visible_gpus()
    if pinned is not None:
        return pinned
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except ImportError:
        return []


def pin_gpu(gpu: str | None) -> None:
    """Make `gpu` the only GPU of this process; call before CUDA starts in it."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _pinned(gpu: str | None, target: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """One packed worker (a spawned process): pin the GPU, then run."""
    pin_gpu(gpu)
    target(**kwargs)


def run_packed(*, target: Callable[..., Any], workers: Sequence[int], gpu: str | None, **kwargs: Any) -> None:
    """Run `target(worker=w, **kwargs)` for each of `workers` at once, one spawned process each
    (`target` a module-level function), on `gpu`; wait for all. A stop signal (SIGTERM, SIGUSR1)
    reaches every worker (each checkpoints and stops).

    Raises:
        WorkerProcessError: a worker process failed (its trial stays RUNNING; a retry continues it).
    """
    spawn = mp.get_context("spawn")
    procs = [spawn.Process(target=_pinned, name=f"worker-{w}", args=(gpu, target, {**kwargs, "worker": w}))
             for w in workers]  # fmt: skip
    log.info("GPU %s: training workers %s at once", gpu, list(workers))

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    failed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode != 0]
    if failed:
        raise WorkerProcessError(
            f"GPU {gpu}: packed worker process(es) {', '.join(failed)} failed (their log above says why); their"
            " trials stay RUNNING: a retry of this task, or `python flows/train_flow.py resume`, continues them"
            " from their checkpoints"
        )
