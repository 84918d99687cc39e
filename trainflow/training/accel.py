"""The GPU fast path: which speed-ups a training run uses, chosen from the device it finds.

`select_fast_path(train_cfg, caps)` is a pure function of the config and the device's
capabilities (`probe_capabilities` reads them from torch; tests pass them in). It returns a
frozen `FastPath` with one reason per choice, logged at the start of each trial:

| choice        | CPU (today's behaviour, unchanged) | CUDA                                          |
|---------------|------------------------------------|-----------------------------------------------|
| autocast      | none (fp32)                        | bf16; fp16 + GradScaler before Ampere         |
| TF32 matmuls  | n/a                                | on from Ampere (fp32 work outside autocast)   |
| AdamW         | default (for-each)                 | fused (one kernel per update)                 |
| torch.compile | off                                | `train.compile`; 'auto' = on for long runs    |
| CUDA graphs   | no                                 | with torch.compile (mode 'reduce-overhead')   |
| batch order   | seeded random (`batch_indices`)    | length-bucketed (`train.length_bucketing`)    |
| padding       | to the longest in the batch        | the same, rounded up to a multiple of 8       |
| loader        | in-process                         | in-process, pinned memory, async copies       |

Both batch orders are pure functions of (seed, step), so a resumed run sees the same batches.
The helpers (`autocast`, `grad_scaler`, `train_batches`, ...) are no-ops on the CPU path, so
`train_model` runs the plain fp32 loop there.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from trainflow.core.errors import DeviceUnavailableError

if TYPE_CHECKING:
    from trainflow.core.config import TrainConfig

# Pad widths up to a multiple of this on CUDA: tensor-core friendly shapes, and at most
# max_length / 8 distinct widths, so a compiled model sees few shapes.
PAD_MULTIPLE = 8
# Loader worker processes on CUDA. Texts are tokenized once before training, so building a
# batch is only gathering and padding id lists (well under a millisecond). On the H100 machines
# (benchmarks/RESULTS.md) 2 workers against none: eager MiniLM batch 32 36 vs 30 ms/step, BERT-base
# 48 vs 50; with CUDA graphs 9.9 vs 10.7 and 16.2 vs 15.6 ms; the same eager setting varied from
# 30 to 45 ms between machines. No measurable gain, so batches are built in-process (one process
# fewer per trial); train_batches takes any number of workers.
CUDA_LOADER_WORKERS = 0
# torch.compile (train.compile 'on') also captures CUDA graphs (mode 'reduce-overhead'): on
# the H100 machine eager steps are bound by ~40 us of host time per kernel launch (GPU busy
# 8-23 %); graphs made steps 2-3x faster than compiling without them.
COMPILE_WITH_CUDA_GRAPHS = True
# train.compile 'auto' compiles only runs at least this long. Measured on the H100 machines:
# each new input shape (training batch size, the epoch's last partial batch, evaluation) costs
# 40-77 s of compilation; a 300-step BERT-base train_model run (batch 32) took 112 s compiled,
# 19 s eager, and 13 s when compiled again in the same process. Compiled steps saved 34-57 ms
# each in the benchmark (batch 32-256), so the first compilation pays after roughly 2,000-7,000
# steps.
COMPILE_AUTO_MIN_STEPS = 5000
# Length bucketing sorts this many batches' worth of a shuffled epoch by length before cutting
# batches: large enough for little padding, small enough that an epoch stays well mixed.
BUCKET_CHUNK_BATCHES = 64


@dataclass(frozen=True)
class Capabilities:
    """What the training process can use. Tests build these directly."""

    cuda: bool
    compute_capability: tuple[int, int] = (0, 0)
    device_name: str = "cpu"
    cpu_count: int = 1

    @property
    def bf16(self) -> bool:
        # bf16 tensor cores arrived with Ampere (8.0); earlier GPUs emulate it slowly.
        return self.cuda and self.compute_capability >= (8, 0)


def probe_capabilities(requested_device: str) -> Capabilities:
    """Read the capabilities from torch. `requested_device="cpu"` never initialises CUDA."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested_device == "cpu" or not torch.cuda.is_available():
        return Capabilities(cuda=False, cpu_count=cpus)
    return Capabilities(
        cuda=True,
        compute_capability=tuple(torch.cuda.get_device_capability()),  # type: ignore[arg-type]
        device_name=torch.cuda.get_device_name(),
        cpu_count=cpus,
    )


CUDA_CHECKPOINT_MIN_SECONDS = 30.0  # 'auto' on CUDA: see train.checkpoint_min_seconds


@dataclass(frozen=True)
class FastPath:
    """The speed-ups one training run uses; `reasons[name]` says why for each field."""

    device: str
    autocast_dtype: torch.dtype | None
    grad_scaler: bool
    tf32: bool
    fused_adamw: bool
    compile: bool
    cuda_graphs: bool
    length_bucketing: bool
    pad_to_multiple: int
    pin_memory: bool
    num_workers: int
    async_checkpoint: bool = False
    checkpoint_min_seconds: float = 0.0
    reasons: Mapping[str, str] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        """What train_model logs at the start of a trial. On CPU one line (the plain loop: there
        is nothing to choose); on CUDA one line per choice with its reason."""
        if self.device == "cpu":
            return f"training on the CPU ({self.reasons.get('device', '')}): {CPU_SUMMARY}" + (
                "; checkpoints written in the background" if self.async_checkpoint else ""
            )
        names = [n for n in self.__dataclass_fields__ if n != "reasons"]
        return "training on the GPU:\n" + "\n".join(f"  {n} = {getattr(self, n)}: {self.reasons.get(n, '')}"
                                                     for n in names)  # fmt: skip


CPU_SUMMARY = (
    "fp32, eager, batches in a seeded random order padded to their longest text (the GPU switches of"
    " train: apply on CUDA only)"
)


def select_fast_path(train: TrainConfig, caps: Capabilities) -> FastPath:
    """Choose the fast path for `train.device` on a machine with `caps`.

    On CPU every choice is the plain loop (fp32, eager,
    seeded random batches padded to their longest sequence, no loader workers), whatever the
    GPU-only switches say.

    Raises:
        DeviceUnavailableError: `train.device == "cuda"` and `caps.cuda` is False.
    """
    if train.device == "cuda" and not caps.cuda:
        raise DeviceUnavailableError(
            f"train.device is 'cuda' but torch {torch.__version__} sees no CUDA device on this machine: run the trials"
            " where a GPU is (compute.gpus, compute.backend), or set train.device to 'auto' or 'cpu'"
        )
    if train.device == "cpu" or not caps.cuda:
        return _cpu_fast_path(train)
    return _cuda_fast_path(train, caps)


def _cpu_fast_path(train: TrainConfig) -> FastPath:
    why = "train.device is 'cpu'" if train.device == "cpu" else "no CUDA device"
    async_ckpt = train.async_checkpoint == "on"
    return FastPath(
        device="cpu",
        autocast_dtype=None,
        grad_scaler=False,
        tf32=False,
        fused_adamw=False,
        compile=False,
        cuda_graphs=False,
        length_bucketing=False,
        pad_to_multiple=1,
        pin_memory=False,
        num_workers=0,
        async_checkpoint=async_ckpt,
        checkpoint_min_seconds=0.0 if train.checkpoint_min_seconds == "auto" else train.checkpoint_min_seconds,
        reasons={
            "device": why,
            "autocast_dtype": "CPU: fp32",
            "grad_scaler": "no fp16 autocast",
            "tf32": "CPU",
            "fused_adamw": "CPU: the default AdamW",
            "compile": f"CPU: eager (train.compile={train.compile!r} applies to CUDA)",
            "cuda_graphs": "CPU",
            "length_bucketing": "CPU: seeded random batches (train.length_bucketing applies to CUDA)",
            "pad_to_multiple": "CPU: pad to the longest sequence in the batch",
            "pin_memory": "CPU",
            "num_workers": "CPU: batches are built in-process",
            "async_checkpoint": "train.async_checkpoint is 'on': written by a background thread"
            if async_ckpt
            else "CPU: checkpoints are written synchronously (train.async_checkpoint 'auto')",
            "checkpoint_min_seconds": "CPU 'auto': every train.checkpoint_every steps"
            if train.checkpoint_min_seconds == "auto"
            else "train.checkpoint_min_seconds",
        },
    )


def _cuda_fast_path(train: TrainConfig, caps: Capabilities) -> FastPath:
    bf16 = caps.bf16
    compile_on, compile_why = _compile_choice(train)
    workers = CUDA_LOADER_WORKERS if caps.cpu_count >= 2 * CUDA_LOADER_WORKERS else 0
    return FastPath(
        device="cuda",
        autocast_dtype=torch.bfloat16 if bf16 else torch.float16,
        grad_scaler=not bf16,
        tf32=caps.compute_capability >= (8, 0),
        fused_adamw=True,
        compile=compile_on,
        cuda_graphs=compile_on and COMPILE_WITH_CUDA_GRAPHS,
        length_bucketing=train.length_bucketing,
        pad_to_multiple=PAD_MULTIPLE,
        pin_memory=True,
        num_workers=workers,
        async_checkpoint=train.async_checkpoint != "off",
        checkpoint_min_seconds=CUDA_CHECKPOINT_MIN_SECONDS
        if train.checkpoint_min_seconds == "auto"
        else train.checkpoint_min_seconds,
        reasons={
            "device": f"{caps.device_name} (compute capability {caps.compute_capability[0]}.{caps.compute_capability[1]})",
            "autocast_dtype": "bf16 tensor cores (Ampere or newer)"
            if bf16
            else "no bf16 tensor cores before Ampere: fp16 autocast",
            "grad_scaler": "fp16 gradients underflow without loss scaling"
            if not bf16
            else "bf16 needs no loss scaling",
            "tf32": "fp32 matmuls outside autocast use TF32 tensor cores"
            if caps.compute_capability >= (8, 0)
            else "no TF32 before Ampere",
            "fused_adamw": "one fused kernel per optimizer step instead of one per tensor op",
            "compile": compile_why,
            "cuda_graphs": "compiled with mode='reduce-overhead': one graph launch replaces hundreds of kernel launches"
            if compile_on and COMPILE_WITH_CUDA_GRAPHS
            else "only with torch.compile",
            "length_bucketing": "batches of similar length: less padding"
            if train.length_bucketing
            else "train.length_bucketing is false",
            "pad_to_multiple": f"widths rounded up to a multiple of {PAD_MULTIPLE}: tensor-core shapes, few distinct shapes",
            "pin_memory": "page-locked batches copy to the GPU asynchronously",
            "num_workers": f"{workers} loader processes build the next batches while the GPU works"
            if workers
            else "batches are built in-process: pre-tokenized, cheap; workers measured no faster (CUDA_LOADER_WORKERS)",
            "async_checkpoint": "the state is copied to pinned CPU memory, then written and hashed by a background thread"
            if train.async_checkpoint != "off"
            else "train.async_checkpoint is 'off'",
            "checkpoint_min_seconds": f"'auto': at least {CUDA_CHECKPOINT_MIN_SECONDS:g} s between step-based"
            " checkpoints, so saving (1.1 GB for BERT-base with AdamW) stays a small share of fast GPU steps"
            if train.checkpoint_min_seconds == "auto"
            else "train.checkpoint_min_seconds",
        },
    )


def _compile_choice(train: TrainConfig) -> tuple[bool, str]:
    if train.compile == "on":
        return True, "train.compile is 'on'"
    if train.compile == "off":
        return False, "train.compile is 'off'"
    if train.max_steps >= COMPILE_AUTO_MIN_STEPS:
        return True, f"train.compile 'auto': {train.max_steps} steps >= {COMPILE_AUTO_MIN_STEPS}, compiling pays off"
    return False, (
        f"train.compile 'auto': {train.max_steps} steps < {COMPILE_AUTO_MIN_STEPS}; compiling (40-75 s per input"
        " shape) would cost more than it saves"
    )


def apply_global_settings(fast: FastPath) -> None:
    """Process-wide switches the fast path needs (TF32). Does nothing on CPU."""
    if fast.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = fast.tf32
        torch.backends.cudnn.allow_tf32 = fast.tf32


def autocast(fast: FastPath) -> contextlib.AbstractContextManager[Any]:
    """Mixed-precision context for the forward pass; a no-op without an autocast dtype."""
    if fast.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=fast.device, dtype=fast.autocast_dtype)


def grad_scaler(fast: FastPath) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for fp16; disabled, its methods pass straight through
    (`scale(loss)` is `loss`, `step(opt)` is `opt.step()`)."""
    return torch.amp.GradScaler(fast.device, enabled=fast.grad_scaler)


def adamw_kwargs(fast: FastPath) -> dict[str, Any]:
    return {"fused": True} if fast.fused_adamw else {}


def maybe_compile(module: torch.nn.Module, fast: FastPath) -> None:
    """Compile `module` in place (`nn.Module.compile` keeps its state_dict keys unchanged).

    dynamic=True: batches vary in width (and the last one of an epoch in size); symbolic shapes
    avoid a recompilation per width. With `fast.cuda_graphs`, mode='reduce-overhead' records a
    CUDA graph per distinct shape (widths are multiples of 8, so there are few)."""
    if fast.compile:
        module.compile(dynamic=True, mode="reduce-overhead" if fast.cuda_graphs else None)


class LengthBucketedOrder:
    """Batch indices for `step`, grouping samples of similar length; a pure function of
    (seed, step) for given lengths, so a resumed run sees the same batches.

    Epoch e starts from the same seeded permutation as `trainflow.training.train.batch_indices`, cuts it
    into chunks of `chunk_batches * batch_size` samples, sorts each chunk by length, cuts it
    into batches, and shuffles the order of the epoch's batches (same generator). Every sample
    appears once per epoch, and an epoch has ceil(n / batch_size) batches, as without bucketing.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int, chunk_batches: int = BUCKET_CHUNK_BATCHES
    ) -> None:
        if batch_size < 1 or chunk_batches < 1 or not lengths:
            raise ValueError("need batch_size >= 1, chunk_batches >= 1 and at least one sample")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.chunk_batches = chunk_batches
        self.per_epoch = math.ceil(len(self.lengths) / batch_size)
        self._cache: tuple[int, list[list[int]]] | None = None  # memo of the last epoch only

    def __call__(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.epoch_batches(epoch))
        return list(self._cache[1][pos])

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=gen).tolist()
        chunk = bs * self.chunk_batches
        batches: list[list[int]] = []
        for start in range(0, n, chunk):
            part = sorted(perm[start : start + chunk], key=self.lengths.__getitem__)  # stable sort
            batches.extend(part[i : i + bs] for i in range(0, len(part), bs))
        order = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[k] for k in order]


class Collate(Protocol):
    """Pads id lists into a batch dict; `trainflow.training.train.collate` with pad_id (and padding) bound."""

    def __call__(self, encoded: list[list[int]], *, device: torch.device) -> dict[str, torch.Tensor]: ...


class _StepBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item `step` is the (CPU) batch of that step."""

    def __init__(
        self, order: Callable[[int], list[int]], encoded: list[list[int]], labels: list[int], collate: Collate
    ) -> None:
        self.order, self.encoded, self.labels, self.collate = order, encoded, labels, collate

    def __getitem__(self, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        idx = self.order(step)
        batch = self.collate([self.encoded[i] for i in idx], device=torch.device("cpu"))
        return batch, torch.tensor([self.labels[i] for i in idx])

    def __len__(self) -> int:  # only a sampler's indices are ever asked for
        raise TypeError("_StepBatches has no length")


def train_batches(
    fast: FastPath,
    *,
    steps: range,
    order: Callable[[int], list[int]],
    encoded: list[list[int]],
    labels: list[int],
    collate: Collate,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Yield (batch, labels) on `fast.device` for each step in `steps`.

    Without workers or pinned memory (the CPU path) this is the plain loop: order, collate,
    labels, in the calling process, touching no global RNG. Otherwise a DataLoader builds the
    batches in `fast.num_workers` processes (with its own generator, so the global torch RNG
    that drives dropout is not consumed) and the pinned batches are copied asynchronously.
    """
    device = torch.device(fast.device)
    if fast.num_workers == 0 and not fast.pin_memory:
        for step in steps:
            idx = order(step)
            _step_begin(fast)
            yield (
                collate([encoded[i] for i in idx], device=device),
                torch.tensor([labels[i] for i in idx], device=device),
            )
        return
    loader = torch.utils.data.DataLoader(
        _StepBatches(order, encoded, labels, collate),
        batch_size=None,
        sampler=steps,
        num_workers=fast.num_workers,
        pin_memory=fast.pin_memory,
        generator=torch.Generator(),
    )
    for batch, lab in loader:
        _step_begin(fast)
        yield (
            {k: v.to(device, non_blocking=True) for k, v in batch.items()},
            lab.to(device, non_blocking=True),
        )


def _step_begin(fast: FastPath) -> None:
    # CUDA graph trees reuse output buffers across replays; marking each training step's start
    # tells them the previous step's outputs are dead (the optimizer step is done by now).
    if fast.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
