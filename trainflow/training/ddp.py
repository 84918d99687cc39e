"""Data parallelism inside one trial: the pieces, not yet wired into the flow.

With several processes training one Optuna trial (torchrun / DDP), each process that called
`trial.suggest_*` on its own would train a different trial: the known HPO + DDP bug of
`transformers` (huggingface/transformers#18609). Here rank 0 alone asks the study and samples
the parameters; `broadcast_params` hands rank 0's values to every rank, and `broadcast_flag`
does the same for rank 0's pruning decision. `shard_indices` gives each rank its slice of the
global batch (a pure function of the batch, so resume stays exact), and `spawn` starts N local
processes with a process group (gloo on CPU for tests, nccl on GPUs).

Status: `train.gpus_per_trial` must be 1 (config validation says so). `train_model` does not
yet wrap the model in DistributedDataParallel, shard batches, or keep evaluation and
checkpointing to rank 0, and the flow does not launch torchrun; see docs/gpu.md.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job, as torchrun sets it (RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> DistEnv:
        env = os.environ if environ is None else environ
        return cls(
            rank=int(env.get("RANK", 0)),
            world_size=int(env.get("WORLD_SIZE", 1)),
            local_rank=int(env.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return `src`'s `obj` on every rank (pickled; for small objects). Without a process
    group, return `obj` unchanged."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj if _rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_params(sample: Callable[[], dict[str, Any]], src: int = 0) -> dict[str, Any]:
    """Call `sample` on rank `src` only (e.g. ask the study and suggest the trial's
    hyperparameters) and return its result on every rank.

    The other ranks must not touch the study: a sampler called on each rank would draw
    different values (huggingface/transformers#18609)."""
    params = sample() if _rank() == src else None
    result = broadcast_object(params, src=src)
    if not isinstance(result, dict):
        raise RuntimeError(f"rank {src} sent {type(result).__name__}, expected the trial's parameter dict")
    return result


def broadcast_flag(flag: bool, src: int = 0) -> bool:
    """Rank `src`'s decision (e.g. `trial.should_prune()`), so every rank stops together."""
    return bool(broadcast_object(bool(flag), src=src))


def shard_indices(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's part of a global batch: every world_size-th sample starting at `rank`.
    The parts are disjoint and together hold the whole batch."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return indices[rank::world_size]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, fn: Callable[..., None], world_size: int, backend: str, port: int, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    os.environ["LOCAL_RANK"] = str(rank)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        # Leave together: a rank tearing down gloo while another is still in a collective (DDP's
        # last all-reduce) aborted the process ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable[..., None], world_size: int, *args: Any, backend: str = "gloo") -> None:
    """Run `fn(rank, world_size, *args)` in `world_size` local processes joined in a process
    group (`gloo` for CPU, `nccl` for one GPU per process). `fn` must be importable (a module-
    level function). Raises if any process fails."""
    mp.spawn(_entry, args=(fn, world_size, backend, _free_port(), args), nprocs=world_size, join=True)
