"""Trial packing on one GPU: trials per GPU-hour with 1, 2, 4 and 8 trials training at once.

    python benchmarks/gpu_packing.py [--config config/gpu.yaml] [--base PATH] [--concurrency 1 2 4 8]

For each concurrency K: a fresh run folder and study, 8 trials (hpo.n_trials) over K workers in
one GPU slot (hpo.workers_per_gpu = K: K processes on the one GPU; K = 1 is the unpacked worker in
this process), through the train step's own stage function (stages/hpo_worker.py). Reports the
wall time of the trials, trials per GPU-hour, the speed-up over K = 1 and the best validation
accuracy; writes the section "GPU trial packing" of benchmarks/RESULTS.md and
benchmarks/gpu_results/gpu_packing.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from default_run import overrides, replace_section  # noqa: E402

from stages.hpo_worker import run_trials  # noqa: E402
from stages.prepare import prepare_run  # noqa: E402
from trainflow.core.config import deep_merge, load_config, parse_config_dict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "gpu.yaml")
    parser.add_argument("--base", default=None)
    parser.add_argument("--root", type=Path, default=Path.home() / "gpu-packing")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, KEY=VALUE (dotted keys)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    base = load_config(args.config).model_dump(mode="json")
    rows = []
    for k in args.concurrency:
        over = {"name": f"pack{k}", "hpo": {"n_trials": args.trials, "n_workers": k, "workers_per_gpu": k,
                                            "pruner": "none"},
                "publish": {"run_root": str(args.root / "runs"), "artifact_root": str(args.root / "artifacts")},
                "data": {"path": str(ROOT / base["data"]["path"])}, "tracking": {"wandb_mode": "disabled"}}  # fmt: skip
        if args.base:
            over["model"] = {"base": args.base}
        if args.steps:
            over["train"] = {"max_steps": args.steps}
        cfg = parse_config_dict(deep_merge(deep_merge(base, over), overrides(args.set)))
        ctx = prepare_run(cfg=cfg, run_key=f"k{k}-{int(time.time())}")
        t0 = time.perf_counter()
        records = run_trials(cfg=cfg, ctx=ctx, worker=0)
        seconds = time.perf_counter() - t0
        done = [r for r in records if r.state == "COMPLETE"]
        best = max((r.metrics.get("accuracy", 0.0) for r in done), default=float("nan"))
        row = {"concurrency": k, "trials": len(done), "seconds": seconds, "trials_per_gpu_hour": len(done) / seconds * 3600,
               "best_validation_accuracy": best}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    one = next((r for r in rows if r["concurrency"] == 1), rows[0])
    lines = [
        f"`benchmarks/gpu_packing.py`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {args.trials} trials of"
        f" {args.steps or base['train']['max_steps']} steps (batch {base['train']['batch_size']}, MiniLM) on one GPU,"
        " K trials at once (K processes sharing the GPU, one study).",
        "",
        "| trials at once | wall s | trials per GPU-hour | vs one at a time | best validation accuracy |",
        "|---|---|---|---|---|",
        *[
            f"| {r['concurrency']} | {r['seconds']:.1f} | {r['trials_per_gpu_hour']:.0f} |"
            f" {r['trials_per_gpu_hour'] / one['trials_per_gpu_hour']:.2f}x | {r['best_validation_accuracy']:.4f} |"
            for r in rows
        ],  # fmt: skip
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        replace_section("GPU trial packing", body)
        (ROOT / "benchmarks" / "gpu_results" / "gpu_packing.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
