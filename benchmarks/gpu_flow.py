"""The real flow on one GPU box, end to end: per-step wall time, the training share, trials per
GPU-hour and the best accuracy.

    python benchmarks/gpu_flow.py [--config config/gpu.yaml] [--base PATH] [--root DIR] [--set KEY=VALUE ...]

Runs `python flows/train_flow.py --config config <resolved copy> run` in a subprocess (W&B off
unless the config says otherwise), then reads the run's task timings through the Metaflow client
and the package's metadata. A step's wall time runs from its first task's start to its last
task's end. Writes the section "GPU flow (<config name>)" of benchmarks/RESULTS.md and
benchmarks/gpu_results/gpu_flow_<config name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "flows"))

from default_run import overrides, replace_section  # noqa: E402

from trainflow.core.config import deep_merge, load_config  # noqa: E402

STEPS = ["start", "train", "join", "refit", "teacher", "distill", "pick", "export", "quantize", "publish", "end"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "gpu.yaml")
    parser.add_argument("--base", default=None, help="model.base (a local folder on machines without the package)")
    parser.add_argument("--root", type=Path, default=Path.home() / "gpu-flow", help="where runs and packages go")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, KEY=VALUE (dotted keys)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    cfg = load_config(args.config).model_dump(mode="json")
    extra = {"publish": {"run_root": str(args.root / "runs"), "artifact_root": str(args.root / "artifacts")},
             "data": {"path": str(ROOT / cfg["data"]["path"])}}  # fmt: skip
    if args.base:
        extra["model"] = {"base": args.base}
    cfg = deep_merge(deep_merge(cfg, extra), overrides(args.set))
    args.root.mkdir(parents=True, exist_ok=True)
    resolved = args.root / f"{cfg['name']}.yaml"
    resolved.write_text("# resolved by benchmarks/gpu_flow.py\n" + yaml.safe_dump(cfg))
    env = {**os.environ, "METAFLOW_USER": os.environ.get("METAFLOW_USER", "bench"),
           "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(args.root), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "flows" / "train_flow.py"), "--config", "config", str(resolved),
                           "run"], cwd=args.root, env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    (args.root / "flow.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stdout[-4000:] + proc.stderr[-4000:])
        sys.exit(f"the flow failed (exit {proc.returncode}); log in {args.root / 'flow.log'}")
    run_id = next(line.split("run-id ")[1].split(")")[0] for line in proc.stdout.splitlines() if "run-id" in line)
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(args.root)
    from metaflow import metadata

    metadata(f"local@{args.root}")
    from trainflow_timings import task_timings

    timings = task_timings(flow_name="TrainFlow", run_id=run_id)
    steps = {}
    for step in STEPS:
        mine = [t for t in timings if t.step == step]
        if not mine:  # refit, teacher, distill, pick: only with hpo.refit / distill.enabled
            continue
        begin, end = min(t.started for t in mine), max(t.finished for t in mine if t.finished)
        steps[step] = {"seconds": (end - begin).total_seconds(), "tasks": len(mine)}
    run_s = (max(t.finished for t in timings if t.finished) - min(t.started for t in timings)).total_seconds()
    package = next((args.root / "artifacts" / cfg["name"]).iterdir())
    meta = json.loads((package / "metadata.json").read_text())
    train_s = steps["train"]["seconds"]
    devices = len([g for g in os.popen("nvidia-smi -L").read().splitlines() if g.strip()]) or 1
    n_slots = -(-cfg["hpo"]["n_workers"] // cfg["hpo"]["workers_per_gpu"])
    gpus = min(devices, n_slots * max(1, int(cfg["compute"]["gpus"])))  # GPUs the trials occupied
    trials_per_gpu_hour = meta["hpo"]["n_trials"] / (train_s / 3600) / gpus
    non_train = sum(v["seconds"] for k, v in steps.items() if k != "train")
    result = {"config": cfg["name"], "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "run_id": run_id,
              "wall_s": wall, "run_s": run_s, "steps": steps, "train_share": train_s / run_s,
              "non_train_s": non_train, "trials": meta["hpo"]["n_trials"], "states": meta["hpo"]["states"],
              "trials_per_gpu_hour": trials_per_gpu_hour, "best_validation": meta["metrics"]["validation"],
              "test_fp32": meta["metrics"]["test_fp32_onnx"], "test_int8": meta["metrics"]["test_int8_onnx"],
              "int8_recipe": meta["quantization"]["chosen_recipe"], "package": str(package),
              "workers_per_gpu": cfg["hpo"]["workers_per_gpu"], "n_workers": cfg["hpo"]["n_workers"],
              "gpu": os.popen("nvidia-smi --query-gpu=name --format=csv,noheader").read().strip() or "none"}  # fmt: skip
    metric = meta["hpo"]["metric"]  # the run's metric: accuracy, macro_f1 (multi-label), mse (regression), ...
    lines = [
        f"`benchmarks/gpu_flow.py --config {args.config.name}`, {result['date']} on {result['gpu']}: the real flow,"
        f" {result['trials']} trials x {cfg['train']['max_steps']} steps (batch {cfg['train']['batch_size']}),"
        f" {cfg['hpo']['n_workers']} workers, {cfg['hpo']['workers_per_gpu']} per GPU slot.",
        "",
        "| step | tasks | wall s |",
        "|---|---|---|",
        *[f"| {k} | {v['tasks']} | {v['seconds']:.1f} |" for k, v in steps.items()],
        "",
        f"Run {run_s:.0f} s (process {wall:.0f} s); training share {result['train_share']:.0%}; all non-training"
        f" steps {non_train:.0f} s; {trials_per_gpu_hour:.0f} trials per GPU-hour; best validation {metric}"
        f" {meta['metrics']['validation'].get(metric, float('nan')):.4f}, test FP32"
        f" {meta['metrics']['test_fp32_onnx'].get(metric, float('nan')):.4f}, INT8"
        f" {meta['metrics']['test_int8_onnx'].get(metric, float('nan')):.4f} ({result['int8_recipe']}); trial states"
        f" {meta['hpo']['states']}.",
    ]
    if "distill" in steps:
        d = meta["distillation"]
        result["distill_share"] = steps["distill"]["seconds"] / run_s
        lines.append(f"Distillation: the distill step {steps['distill']['seconds']:.1f} s ({result['distill_share']:.0%} of"
                     f" the run); {d['reason']}.")  # fmt: skip
    body = "\n".join(lines)
    print(body)
    print(json.dumps(result, indent=1, default=str))
    if not args.no_write:
        replace_section(f"GPU flow ({cfg['name']})", body)
        out = ROOT / "benchmarks" / "gpu_results" / f"gpu_flow_{cfg['name']}.json"
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
