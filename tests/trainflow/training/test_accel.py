"""The GPU fast-path choices and helpers (trainflow/training/accel.py), on CPU: capabilities are passed in."""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import pytest
import torch

from trainflow.core.config import TrainConfig
from trainflow.core.errors import TrainflowError
from trainflow.training import accel
from trainflow.training.accel import Capabilities, DeviceUnavailableError, LengthBucketedOrder, select_fast_path
from trainflow.training.accel import FastPath as FastPathFields
from trainflow.training.train import batch_indices, collate

CPU = Capabilities(cuda=False, cpu_count=2)
HOPPER = Capabilities(cuda=True, compute_capability=(9, 0), device_name="H100", cpu_count=16)
VOLTA = Capabilities(cuda=True, compute_capability=(7, 0), device_name="V100", cpu_count=8)
GPU_FIELDS = ("autocast_dtype", "grad_scaler", "tf32", "fused_adamw", "compile", "cuda_graphs", "length_bucketing")


@pytest.mark.parametrize(
    ("caps", "device"), [(CPU, "auto"), (CPU, "cpu"), (HOPPER, "cpu")], ids=["no-gpu", "cpu", "cpu-on-gpu-host"]
)
def test_cpu_path_is_todays_loop_whatever_the_gpu_switches_say(caps: Capabilities, device: str) -> None:
    train = TrainConfig(device=device, compile="on", length_bucketing=True, max_steps=100_000)
    fast = select_fast_path(train, caps)
    assert fast.device == "cpu"
    assert fast.autocast_dtype is None
    assert not any(getattr(fast, f) for f in GPU_FIELDS)
    assert (fast.pad_to_multiple, fast.pin_memory, fast.num_workers) == (1, False, 0)
    assert all(fast.reasons.get(f.name) for f in dataclasses.fields(fast) if f.name != "reasons")


def test_cuda_with_bf16_takes_the_fast_path() -> None:
    fast = select_fast_path(TrainConfig(device="auto"), HOPPER)
    assert fast.device == "cuda"
    assert fast.autocast_dtype == torch.bfloat16 and not fast.grad_scaler
    assert fast.tf32 and fast.fused_adamw and fast.length_bucketing and fast.pin_memory
    assert fast.pad_to_multiple == 8
    assert "H100" in fast.describe()


def test_cuda_without_bf16_uses_fp16_with_a_grad_scaler() -> None:
    fast = select_fast_path(TrainConfig(device="cuda"), VOLTA)
    assert fast.autocast_dtype == torch.float16 and fast.grad_scaler
    assert not fast.tf32
    assert "fp16" in fast.reasons["autocast_dtype"]


@pytest.mark.parametrize(
    ("switch", "steps", "compiled"),
    [
        ("auto", 100, False),
        ("auto", accel.COMPILE_AUTO_MIN_STEPS - 1, False),
        ("auto", accel.COMPILE_AUTO_MIN_STEPS, True),
        ("on", 10, True),
        ("off", 1_000_000, False),
    ],
)
def test_compile_switch(switch: str, steps: int, compiled: bool) -> None:
    fast = select_fast_path(TrainConfig(compile=switch, max_steps=steps), HOPPER)
    assert fast.compile is compiled
    assert fast.cuda_graphs is (compiled and accel.COMPILE_WITH_CUDA_GRAPHS)
    assert str(steps) in fast.reasons["compile"] or switch != "auto"


def test_length_bucketing_can_be_switched_off_and_cuda_must_exist() -> None:
    assert not select_fast_path(TrainConfig(length_bucketing=False), HOPPER).length_bucketing
    with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
        select_fast_path(TrainConfig(device="cuda"), CPU)
    fast = select_fast_path(TrainConfig(), HOPPER)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.compile = True  # type: ignore[misc]


def _padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


LENGTHS = [int(4 + 68 * (((i * 7919) % 1000) / 1000) ** 2) for i in range(1003)]  # skewed, 4..72


def test_bucketing_covers_every_sample_once_per_epoch() -> None:
    bs = 16
    order = LengthBucketedOrder(LENGTHS, bs, seed=3, chunk_batches=8)
    per_epoch = math.ceil(len(LENGTHS) / bs)
    assert order.per_epoch == per_epoch
    for epoch in range(2):
        batches = [order(epoch * per_epoch + k) for k in range(per_epoch)]
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
        assert sum(len(b) < bs for b in batches) == 1  # 1003 = 62 * 16 + 11: one partial batch
    assert order(0) != order(per_epoch), "each epoch is reshuffled"


def test_bucketing_groups_similar_lengths() -> None:
    bs = 16
    per_epoch = math.ceil(len(LENGTHS) / bs)
    bucketed = LengthBucketedOrder(LENGTHS, bs, seed=3)
    random_batches = [batch_indices(k, len(LENGTHS), bs, seed=3) for k in range(per_epoch)]
    bucketed_batches = [bucketed(k) for k in range(per_epoch)]
    assert _padding(bucketed_batches, LENGTHS) < 0.1 * _padding(random_batches, LENGTHS)
    # ... while batch order within the epoch is still mixed: not sorted by length.
    widths = [max(LENGTHS[i] for i in b) for b in bucketed_batches]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)


def test_bucketed_order_is_a_pure_function_of_seed_and_step() -> None:
    a = LengthBucketedOrder(LENGTHS, 16, seed=3)
    steps = [0, 5, 62, 63, 64, 130, 7]
    first = [a(s) for s in steps]
    fresh = LengthBucketedOrder(LENGTHS, 16, seed=3)  # as after a resume: no memo, steps out of order
    assert [fresh(s) for s in reversed(steps)] == list(reversed(first))
    assert LengthBucketedOrder(LENGTHS, 16, seed=4)(0) != first[0]


ENCODED = [list(range(1, 1 + n)) for n in (3, 9, 5, 12, 7, 4, 10, 6, 8, 2, 11)]
LABELS = [i % 2 for i in range(len(ENCODED))]


def _reference(step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """What train_model's loop did before the fast path."""
    idx = batch_indices(step, len(ENCODED), 4, seed=1)
    return collate([ENCODED[i] for i in idx], 0, torch.device("cpu")), torch.tensor([LABELS[i] for i in idx])


@pytest.mark.parametrize("workers", [0, 2])
def test_train_batches_are_todays_batches_and_leave_the_global_rng_alone(workers: int) -> None:
    fast = dataclasses.replace(select_fast_path(TrainConfig(), CPU), num_workers=workers)
    order = partial(batch_indices, n=len(ENCODED), batch_size=4, seed=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    got = list(
        accel.train_batches(
            fast,
            steps=range(2, 9),
            order=order,
            encoded=ENCODED,
            labels=LABELS,
            collate=partial(collate, pad_id=0),
        )
    )
    assert torch.equal(torch.get_rng_state(), before), "dropout's RNG stream must not move (exact resume)"
    assert len(got) == 7
    for step, (batch, labels) in zip(range(2, 9), got):
        want_batch, want_labels = _reference(step)
        assert torch.equal(labels, want_labels)
        assert batch.keys() == want_batch.keys()
        assert all(torch.equal(batch[k], want_batch[k]) for k in batch)


def test_collate_rounds_width_up_but_not_past_max_width() -> None:
    enc = [[1, 2, 3], [4] * 9]
    assert collate(enc, 0, torch.device("cpu"))["input_ids"].shape == (2, 9)
    assert collate(enc, 0, torch.device("cpu"), pad_to_multiple=8)["input_ids"].shape == (2, 16)
    capped = collate(enc, 0, torch.device("cpu"), pad_to_multiple=8, max_width=12)
    assert capped["input_ids"].shape == (2, 12)
    assert capped["attention_mask"].sum().item() == 12 and capped["input_ids"][0, 3:].eq(0).all()


def test_cpu_helpers_are_pass_throughs() -> None:
    fast = select_fast_path(TrainConfig(), CPU)
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    accel.apply_global_settings(fast)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    assert accel.adamw_kwargs(fast) == {}
    loss = torch.tensor(2.0, requires_grad=True)
    scaler = accel.grad_scaler(fast)
    assert scaler.scale(loss) is loss and not scaler.is_enabled()
    with accel.autocast(fast):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    module = torch.nn.Linear(2, 2)
    accel.maybe_compile(module, fast)
    assert module._compiled_call_impl is None  # not compiled


def test_checkpoint_policy_is_asynchronous_and_time_floored_on_cuda_only() -> None:
    cpu, cuda = select_fast_path(TrainConfig(), CPU), select_fast_path(TrainConfig(), HOPPER)
    assert (cpu.async_checkpoint, cpu.checkpoint_min_seconds) == (False, 0.0), "CPU: as before"
    assert (cuda.async_checkpoint, cuda.checkpoint_min_seconds) == (True, accel.CUDA_CHECKPOINT_MIN_SECONDS)
    forced = TrainConfig(async_checkpoint="on", checkpoint_min_seconds=5)
    assert (select_fast_path(forced, CPU).async_checkpoint, select_fast_path(forced, CPU).checkpoint_min_seconds) == (
        True,
        5,
    )
    off = select_fast_path(TrainConfig(async_checkpoint="off", checkpoint_min_seconds=0), HOPPER)
    assert (off.async_checkpoint, off.checkpoint_min_seconds) == (False, 0)


def test_the_cpu_path_is_one_log_line_and_the_gpu_path_explains_each_choice() -> None:
    cpu = select_fast_path(TrainConfig(device="cpu"), CPU).describe()
    assert "\n" not in cpu and cpu.startswith("training on the CPU") and "as before" not in cpu
    gpu = select_fast_path(TrainConfig(device="auto"), HOPPER).describe().splitlines()
    assert gpu[0] == "training on the GPU:" and len(gpu) == 1 + len(dataclasses.fields(FastPathFields)) - 1
    assert all(": " in line and line.split(": ", 1)[1] for line in gpu[1:])


def test_cuda_asked_for_where_there_is_none_is_a_one_line_trainflow_error() -> None:
    with pytest.raises(TrainflowError) as err:
        select_fast_path(TrainConfig(device="cuda"), CPU)
    assert isinstance(err.value, DeviceUnavailableError) and "\n" not in str(err.value)
    assert "train.device to 'auto' or 'cpu'" in str(err.value)
