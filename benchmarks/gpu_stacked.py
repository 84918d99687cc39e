"""K trials at once on one GPU, two ways, side by side in one run: K processes (what
hpo.workers_per_gpu does) against K trials stacked in one process with torch.func
(benchmarks/stacked_trials.py: vmap over stacked weights, per-trial learning rates).

On the CUDA machine (needs torch, transformers, pydantic; random weights, no model files):

    PYTHONPATH=. python3 benchmarks/gpu_stacked.py --out DIR [--smoke]
    .venv/bin/python benchmarks/gpu_stacked.py --record DIR/gpu_stacked.json   # here: RESULTS.md section

The trial shape is the flow's on config/gpu.yaml: MiniLM-L6, batch 32, the fast path b of
benchmarks/gpu_train.py (bf16 autocast, TF32, length-bucketed batches, pinned async copies, eager).
Each trial has its own data order (seed), as trials do. Rows:
  processes K  K spawned processes, each trains one trial (K = 1 too: one spawned process, first
               and again last; "this process": one trial in the benchmark's own process);
               aggregate over the longest timed window, the windows starting together
  stacked K    one process; each step collates K batches (one per trial, through the same loader
               as train_model), pads them to the widest, one vmap forward + backward, one AdamW
               over all K; eager attention (SDPA fails under vmap, see plan()); not compiled:
               torch.compile of the vmapped step fails (dynamo cannot run dropout under vmap's
               randomness='different', torch 2.13 here)
Throughput in trial-steps per second (and samples/s); MFU counts real tokens only, as in
gpu_train.py. Also BERT-base at batch 256, stacked K = 2, for the MFU question.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_train as gt  # noqa: E402

SECTION = "GPU trials: packed processes vs torch.func stacking (benchmarks/gpu_stacked.py)"
HPARAMS = {"learning_rate": 1e-4, "weight_decay": 0.01, "warmup_ratio": 0.1}


def measure_stacked(*, model_name: str, k: int, batch: int, attn: str, smoke: bool, peak: float) -> dict[str, Any]:
    from stacked_trials import StackedTrials, stack_batches

    from trainflow import accel
    from trainflow.train import collate

    fast = gt.variants(gt.capabilities())["b"]
    accel.apply_global_settings(fast)
    gt.reset_peak_memory()
    data = [gt.synthetic_data(2048 if smoke else 16_384, seed=t) for t in range(k)]  # each trial its own data
    model = gt.build_model(model_name, 2 if smoke else None, attn)
    hf = model.hf
    per_epoch = -(-len(data[0][0]) // batch)
    warm = 3
    timed = max(8, min(per_epoch, (1024 if smoke else 8192) // batch))
    stacked = StackedTrials(hf, [HPARAMS] * k, total_steps=warm + timed + 1)
    coll = partial(collate, pad_id=0, pad_to_multiple=fast.pad_to_multiple, max_width=gt.MAX_LENGTH)
    orders = [accel.LengthBucketedOrder([len(e) for e in d[0]], batch, seed=1 + t) for t, d in enumerate(data)]
    streams = [
        accel.train_batches(fast, steps=range(warm + timed), order=o, encoded=d[0], labels=d[1], collate=coll)
        for o, d in zip(orders, data)
    ]
    counts = gt.flop_counts(model)
    timed_steps = range(warm, warm + timed)
    flops = sum(gt.sample_flops(counts, len(d[0][i])) for o, d in zip(orders, data) for s in timed_steps for i in o(s))

    def run(n: int) -> None:
        for _ in range(n):
            got = [next(s) for s in streams]
            ids, mask, labels = stack_batches([b for b, _ in got], [y for _, y in got])
            stacked.step(ids, mask, labels, accel.autocast(fast))

    t0 = time.perf_counter()
    run(warm)
    gt.sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(timed)
    gt.sync()
    secs = time.perf_counter() - t0
    samples = sum(len(o(s)) for o in orders for s in timed_steps)
    row = {"model": model_name, "how": f"stacked ({attn})", "k": k, "batch": batch,
           "window_s": secs, "step_ms": 1000 * secs / timed, "trial_steps_per_s": k * timed / secs,
           "samples_per_s": samples / secs, "tflops": flops / secs / 1e12, "mfu": flops / secs / 1e12 / peak,
           "peak_mem_gib": gt.peak_memory_gib(), "warmup_s": warm_s}  # fmt: skip
    gt.log(f"{model_name:10s} {row['how']:24s} K={k} bs={batch:4d} {row['step_ms']:8.2f} ms/step "
           f"{row['trial_steps_per_s']:8.1f} trial-steps/s MFU {100 * row['mfu']:5.1f}% mem {row['peak_mem_gib']:.2f} GiB")  # fmt: skip
    return row


def processes_row(model_name: str, k: int, batch: int, smoke: bool, peak: float, spawn: bool = True) -> dict[str, Any]:
    """gpu_train's packed measurement as a row of this table: K spawned processes (K = 1 too, so
    that one trial alone runs as a packed one does); spawn=False: one trial in this process."""
    if not spawn:
        rows: list[dict[str, Any]] = []
        gt.measure(model_name=model_name, variant="b", fast=gt.variants(gt.capabilities())["b"], batch_sizes=[batch],
                   data=gt.synthetic_data(2048 if smoke else 16_384, seed=0), sample_budget=1024 if smoke else 8192,
                   peak_tflops=peak, layers=2 if smoke else None, profile_dir=None, profile_batches=(),
                   checkpoint_dir=None, rows=rows)  # fmt: skip
        r = rows[0]
        window, steps_ms = r["seconds"], [r["step_ms"]]
        samples_per_s, tflops, mem = r["samples_per_s"], r["tflops"], r["peak_mem_gib"]
    else:
        r = gt.measure_packed(model_name=model_name, variant="b", k=k, batch=batch, smoke=smoke, peak=peak)
        window, steps_ms = r["window_s"], r["per_process_step_ms"]
        samples_per_s, tflops, mem = r["samples_per_s"], r["tflops"], r["peak_mem_gib_per_process"] * k
    return {"model": model_name, "how": "processes" if spawn else "this process", "k": k, "batch": batch,
            "window_s": window, "step_ms": max(steps_ms), "trial_steps_per_s": samples_per_s / batch,  # full batches: 16,384 / 32
            "samples_per_s": samples_per_s, "tflops": tflops, "mfu": tflops / peak, "peak_mem_gib": mem,
            "warmup_s": float("nan")}  # fmt: skip


def plan(smoke: bool) -> list[tuple[str, Any]]:
    """Processes and stacked taking turns; one trial alone first and last (drift check). The
    stacked path uses eager attention: SDPA's memory-efficient kernel fails in the backward under
    vmap (`LSE is not correctly aligned (strideH)`, torch 2.11 on the H200, 2026-12-03)."""
    model, batch = "MiniLM-L6", 32
    ks = (1, 2) if smoke else (1, 2, 4, 8)
    stacked = partial(measure_stacked, model_name=model, batch=batch, attn="eager")
    jobs: list[tuple[str, Any]] = [("processes K=1", partial(processes_row, model, 1, batch))]
    for k in ks:
        jobs += [(f"stacked K={k}", partial(stacked, k=k))]
        jobs += [(f"processes K={k}", partial(processes_row, model, k, batch))] if k > 1 else []
    jobs += [("processes K=1 again", partial(processes_row, model, 1, batch))]
    jobs += [("this process K=1", partial(processes_row, model, 1, batch, spawn=False))]
    if not smoke:
        jobs += [("BERT-base stacked K=2 b256", partial(measure_stacked, model_name="BERT-base", k=2, batch=256,
                                                       attn="eager"))]  # fmt: skip
        jobs += [("BERT-base processes K=2 b256", partial(processes_row, "BERT-base", 2, 256))]
    return jobs


def gpu_main(out: Path, smoke: bool) -> None:
    import torch
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    caps = gt.capabilities()
    peak = gt.bf16_peak(256 if gt.DEVICE != "cuda" else 2048 if smoke else 8192, 5 if smoke else 20)
    results: dict[str, Any] = {
        "env": {"device": caps.device_name, "torch": torch.__version__, "transformers": transformers.__version__,
                "cpus": caps.cpu_count, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "bf16_peak_tflops": peak, "smoke": smoke},
        "rows": [],
    }  # fmt: skip
    gt.log(f"env: {results['env']}")
    for name, job in plan(smoke):
        t0 = time.perf_counter()
        try:
            results["rows"].append(job(smoke=smoke, peak=peak))
        except Exception as err:  # record it and go on
            traceback.print_exc()
            results.setdefault("errors", []).append({"job": name, "error": repr(err)[:300]})
        gt.log(f"  ({name}: {time.perf_counter() - t0:.0f} s)")
        (out / "gpu_stacked.json").write_text(json.dumps(results, indent=1, default=str))
    table = render(results)
    (out / "gpu_stacked.md").write_text(table)
    gt.log("\n" + table)


def render(results: dict[str, Any]) -> str:
    env, rows = results["env"], results["rows"]
    ones = [r for r in rows if r["how"].startswith("processes") and r["k"] == 1]  # first and last: the faster
    one = max(ones, key=lambda r: r["trial_steps_per_s"], default=None)
    lines = [
        f"{env['device']}, torch {env['torch']}, transformers {env['transformers']}, {env['date']}; bf16 matmul"
        f" peak {env['bf16_peak_tflops']:.0f} TFLOP/s. Trial-steps/s: training steps of all K trials per second; 'vs one trial': against the faster of"
        " the one-process rows.",
        "",
        "| model | how | trials at once K | batch | ms per step | trial-steps/s | vs one trial | samples/s | TFLOP/s | MFU |"
        " peak mem GiB (all K) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:  # in the order measured
        vs = f"{r['trial_steps_per_s'] / one['trial_steps_per_s']:.2f}x" if one and r["model"] == one["model"] else ""
        lines.append(
            f"| {r['model']} | {r['how']} | {r['k']} | {r['batch']} | {r['step_ms']:.1f} | {r['trial_steps_per_s']:.1f} |"
            f" {vs} | {r['samples_per_s']:,.0f} | {r['tflops']:.1f} | {100 * r['mfu']:.1f}% | {r['peak_mem_gib']:.2f} |"
        )
    for e in results.get("errors", []):
        lines.append(f"\nFAILED: {e['job']}: {e['error'][:160]}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--cpu-dry-run", action="store_true", help="with --smoke: the code paths on the CPU")
    ap.add_argument("--record", type=Path, help="a gpu_stacked.json to write into benchmarks/RESULTS.md")
    ap.add_argument("--notes", type=Path, help="markdown appended under the table when recording")
    args = ap.parse_args()
    if args.record:
        body = render(json.loads(args.record.read_text())) + ("\n" + args.notes.read_text() if args.notes else "")
        gt.replace_section(SECTION, body)
    elif args.out:
        if args.cpu_dry_run:
            gt.DEVICE = "cpu"
        gpu_main(args.out, args.smoke)
    else:
        ap.error("give --out or --record")


if __name__ == "__main__":
    main()
