"""Time the default pipeline end to end and record its quality against the majority baseline.

    .venv/bin/python benchmarks/default_run.py [--config config/default.yaml]

Runs `python flows/train_flow.py run` in a subprocess, then reads the published package's
metadata.json and writes the figures to benchmarks/RESULTS.md (section "Default run").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def replace_section(title: str, body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"## {title}\n\n{body.strip()}\n\n"
    text = pattern.sub(section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


def overrides(pairs: list[str]) -> dict:
    """Config overrides from KEY=VALUE pairs (dotted keys, YAML values): {"a": {"b": 1}} for a.b=1."""
    import yaml

    out: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        node = out
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="config/default.yaml")
    args = parser.parse_args()
    env = {**os.environ, "METAFLOW_USER": os.environ.get("METAFLOW_USER", "bench"), "WANDB_MODE": "offline"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "flows/train_flow.py", "--config", "config", args.config, "run"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"flow failed after {wall:.0f} s:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    path = re.findall(r"Published package: (\S+)", proc.stdout + proc.stderr)[-1]
    meta = json.loads((Path(path) / "metadata.json").read_text())
    m = meta["metrics"]
    rows = [
        ("wall time of `python flows/train_flow.py run`", f"{wall:.0f} s ({wall / 60:.1f} min)"),
        ("trials (states)", f"{meta['hpo']['n_trials']} {meta['hpo']['states']}"),
        ("best trial, validation", json.dumps({k: round(v, 4) for k, v in m["validation"].items()})),
        ("test accuracy, FP32 ONNX", f"{m['test_fp32_onnx']['accuracy']:.4f}"),
        ("test accuracy, majority-class baseline", f"{m['test_majority_baseline']['accuracy']:.4f}"),
        ("test macro-F1, FP32 ONNX / baseline",
         f"{m['test_fp32_onnx']['macro_f1']:.4f} / {m['test_majority_baseline']['macro_f1']:.4f}"),
        ("test accuracy, INT8 ONNX (drop)", f"{m['test_int8_onnx']['accuracy']:.4f} ({m['int8_accuracy_drop'] * 100:.2f} points)"),
        ("parity max abs logit diff", f"{m['parity']['max_abs_diff']:.2e} over {m['parity']['n_samples']} samples"),
        ("batch-1 p50 latency FP32 / INT8 ORT", f"{m['latency_batch1_fp32']['p50_ms']:.2f} / {m['latency_batch1_int8']['p50_ms']:.2f} ms"),
        ("model size FP32 / INT8", f"{m['size_bytes']['fp32'] / 1e6:.1f} / {m['size_bytes']['int8'] / 1e6:.1f} MB"),
    ]  # fmt: skip
    body = "\n".join(
        [
            f"`benchmarks/default_run.py --config {args.config}`, {datetime.now(UTC):%Y-%m-%d}, "
            f"{platform.machine()} {os.cpu_count()} cores, package `{meta['version']}`.",
            "",
            "| what | value |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in rows],
        ]
    )
    replace_section(f"Default run ({Path(args.config).name})", body)
    print(body)


if __name__ == "__main__":
    main()
