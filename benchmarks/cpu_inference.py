"""CPU inference benchmark of a trained run: ORT FP32 against the package's INT8 (the model the
quantize step's search chooses), at every thread count, batch 1 and 32, in one process.

    .venv/bin/python benchmarks/cpu_inference.py [--run-dir runs/rt-sentiment/<run id>] [--threads 1 2 4 8 16]

Steps: re-run the INT8 recipe search of `trainflow/convert/quantize.py` on a copy of the run's FP32 ONNX
model (same calibration subset and test split, the run's resolved quantize config if its package
is found, else the defaults) and time it; then, for each thread count (default 1, 2, 4, 8, 16 up
to the logical cores), time both models at batch 1 x seq 64 and batch 32 x seq 64, the models
taking turns in blocks so that load from other processes hits them alike; profile both at one
thread (ORT's per-op kernel times). Writes the section "CPU inference (<model>, <CPU>)" of
benchmarks/RESULTS.md and benchmarks/cpu_inference_<cpu tag>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from default_run import replace_section  # noqa: E402  (benchmarks/ is the script's own folder)

from trainflow.convert.onnx_model import OnnxTextModel, SessionSettings  # noqa: E402
from trainflow.convert.quantize import evaluate_onnx, quantize_and_gate  # noqa: E402
from trainflow.core.config import QuantizeConfig  # noqa: E402
from trainflow.data.dataset import SplitData  # noqa: E402

SHAPES = [(1, 64), (32, 64)]
TARGET_SHAPE = (1, 64)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def newest_run() -> Path:
    runs = sorted((ROOT / "runs").glob("*/*/onnx/*/model.onnx"), key=lambda p: p.stat().st_mtime)
    if not runs:
        sys.exit("no run with onnx/<attempt>/model.onnx under runs/: run `make run` first or pass --run-dir")
    return runs[-1].parents[2]


def split(run: Path, name: str) -> SplitData:
    import pandas as pd

    f = pd.read_parquet(run / "data" / f"{name}.parquet")
    return SplitData(f["id"].astype(str).tolist(), f["text"].tolist(), f["label"].astype(int).tolist())


def run_config(run: Path) -> tuple[dict, Path | None]:
    """The resolved config (a plain dict) and package of `run`, from the package whose metadata
    names it; {} when there is none."""
    for meta_file in sorted((ROOT / "artifacts").glob("*/*/metadata.json")):
        meta = json.loads(meta_file.read_text())
        if meta.get("metaflow", {}).get("run_key") == run.name:
            return meta["config"], meta_file.parent
    return {}, None


def quantize_config(raw: dict) -> tuple[QuantizeConfig, str]:
    try:
        return QuantizeConfig.model_validate(raw["quantize"]), "the run's"
    except (KeyError, ValidationError):
        return QuantizeConfig(), "the default (the run's package predates the recipe search)"


def cpu_info() -> dict[str, object]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(re.findall(r"\b(avx2|avx512f|avx512_vnni|avx_vnni|amx_int8|amx_tile|avx512_bf16|fma)\b", text))
    model = re.search(r"model name\s*:\s*(.*)", text)
    return {
        "model": model.group(1).strip() if model else platform.processor(),
        "logical_cores": os.cpu_count(),
        "flags": sorted(flags),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
        "amx": bool(flags & {"amx_int8", "amx_tile"}),
    }


def load_avg() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def fixed_length_inputs(tok: object, texts: list[str], batch: int, seq: int, pool: int) -> list[dict[str, np.ndarray]]:
    """`pool` feeds of `batch` real-text sequences of exactly `seq` tokens (no padding): each row
    concatenates consecutive test texts until it is long enough, then truncates."""
    rows: list[str] = []
    i = 0
    while len(rows) < batch * pool:
        words: list[str] = []
        while len(" ".join(words).split()) < seq * 2:
            words.append(texts[i % len(texts)])
            i += 1
        rows.append(" ".join(words))
    feeds = []
    for b in range(pool):
        enc = tok(rows[b * batch : (b + 1) * batch], truncation=True, max_length=seq, return_tensors="np")  # type: ignore[operator]
        if enc["input_ids"].shape != (batch, seq):
            raise ValueError(f"could not build {batch}x{seq} inputs, got {enc['input_ids'].shape}")
        feeds.append({k: enc[k].astype(np.int64) for k in INPUTS})
    return feeds


def measure(runners: dict[str, Callable[[dict[str, np.ndarray]], object]], feeds: list[dict[str, np.ndarray]],
            iters: int, warmup: int, block: int) -> dict[str, list[float]]:  # fmt: skip
    """Latencies (ms) per engine; engines take turns in blocks of `block` calls."""
    for run in runners.values():
        for k in range(warmup):
            run(feeds[k % len(feeds)])
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for turn in range(0, iters, block):
        order = names[turn // block % len(names) :] + names[: turn // block % len(names)]
        for name in order:
            for k in range(turn, min(turn + block, iters)):
                f = feeds[k % len(feeds)]
                t0 = time.perf_counter()
                runners[name](f)
                times[name].append((time.perf_counter() - t0) * 1000)
    return times


GEMM_OPS = {"MatMul", "MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "Gemm",
            "FusedMatMul", "QGemm", "FusedGemm"}  # fmt: skip


def op_profile(path: Path, feed: dict[str, np.ndarray], settings: SessionSettings, runs: int = 200) -> dict:
    """ORT's own per-node kernel times for `feed`, summed by op type (ms per call), after 20
    warm-up calls that are left out of the sums."""
    import onnxruntime as ort

    warmup = 20
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_num_threads
    opts.inter_op_num_threads = settings.inter_op_num_threads
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "cpu-bench-profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(warmup + runs):
        session.run(["logits"], feed)
    profile_file = Path(session.end_profiling())
    events = json.loads(profile_file.read_text())
    profile_file.unlink(missing_ok=True)
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    cutoff = starts[warmup]
    calls = len(starts) - warmup
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= cutoff:
            op = e["args"]["op_name"]
            by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1000 / calls
    total = sum(by_op.values())
    gemm = sum(v for k, v in by_op.items() if k in GEMM_OPS)
    top = dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:8])
    return {"calls": calls, "total_ms": total, "gemm_ms": gemm, "other_ms": total - gemm, "top_ops_ms": top}


def summarize(ms: list[float], batch: int) -> dict[str, float]:
    arr = np.asarray(ms)
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p95_ms": float(np.percentile(arr, 95)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "throughput_per_s": float(batch * 1000 / arr.mean()),
        "n": len(arr),
    }


def cpu_tag(cpu: dict) -> str:
    return "xeon" if "Xeon" in str(cpu["model"]) else ("epyc" if "EPYC" in str(cpu["model"]) else "cpu")


def sweep(paths: dict[str, Path], tok: object, max_length: int, texts: list[str], threads: list[int], args) -> dict:
    """{threads: {shape: {engine: summary}}} for b1_s64 and b32_s64."""
    out: dict[int, dict[str, dict[str, dict[str, float]]]] = {}
    feeds = {(b, s): fixed_length_inputs(tok, texts, b, s, pool=16 if b == 1 else 4) for b, s in SHAPES}
    for n in threads:
        models = {k: OnnxTextModel(p, tok, max_length, settings=SessionSettings(n)) for k, p in paths.items()}
        runners = {k: (lambda feed, m=m: m.session.run(["logits"], feed)) for k, m in models.items()}
        out[n] = {}
        for (batch, seq), fs in feeds.items():
            iters = args.iters_b1 if batch == 1 else args.iters_b32
            times = measure(runners, fs, iters=iters, warmup=max(10, iters // 20), block=10 if batch == 1 else 2)
            out[n][f"b{batch}_s{seq}"] = {k: summarize(ms, batch) for k, ms in times.items()}
        print(f"threads {n}: " + ", ".join(
            f"{shape} INT8 {v['ORT INT8']['p50_ms']:.2f} / FP32 {v['ORT FP32']['p50_ms']:.2f} ms" for shape, v in out[n].items()),
            flush=True)  # fmt: skip
    return out


def main() -> None:  # noqa: C901 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="runs/<name>/<run id>; default: the newest")
    parser.add_argument("--threads", type=int, nargs="*", default=None, help="thread counts (default 1,2,4,8,16)")
    parser.add_argument("--iters-b1", type=int, default=300)
    parser.add_argument("--iters-b32", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import onnxruntime as ort
    from transformers import AutoTokenizer

    run = (args.run_dir or newest_run()).resolve()
    load_before = load_avg()
    t_start = time.perf_counter()
    cfg, package = run_config(run)
    qcfg, qcfg_source = quantize_config(cfg)
    max_length = int(cfg.get("model", {}).get("max_length", 64))
    name = cfg.get("name", run.parent.name)
    task = cfg.get("task", {}).get("type", "classification")
    n_classes = len(cfg.get("task", {}).get("labels", [0, 1]))
    if task != "classification":
        sys.exit("this benchmark reports accuracy for classification runs only")
    calibration, test = split(run, "calibration"), split(run, "test")
    work = Path(tempfile.mkdtemp(prefix="cpu-bench-"))
    onnx_dir = work / "onnx"
    source = next(iter(sorted(run.glob("onnx/*/model.onnx"))), run / "onnx" / "model.onnx").parent
    shutil.copytree(source, onnx_dir, ignore=shutil.ignore_patterns("model_int8.onnx", "int8-search"))
    tok = AutoTokenizer.from_pretrained(onnx_dir)
    cores = os.cpu_count() or 1
    threads = args.threads or [n for n in (1, 2, 4, 8, 16) if n <= cores]

    # 1. The package's INT8: the recipe search, exactly as the quantize step runs it (timed).
    t0 = time.perf_counter()
    quant = quantize_and_gate(fp32_path=onnx_dir / "model.onnx", tokenizer=tok, task=task, n_classes=n_classes,
                              cutpoints=None, calibration=calibration, test=test, max_length=max_length, q=qcfg)  # fmt: skip
    search_s = time.perf_counter() - t0
    paths = {"ORT FP32": onnx_dir / "model.onnx", "ORT INT8": Path(quant.int8_path)}
    accuracy = {k: evaluate_onnx(OnnxTextModel(p, tok, max_length), task, test, n_classes, None)["accuracy"]
                for k, p in paths.items()}  # fmt: skip
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    table = sweep(paths, tok, max_length, test.texts, threads, args)
    target_feed = fixed_length_inputs(tok, test.texts, *TARGET_SHAPE, pool=1)[0]
    profiles = {k: op_profile(p, target_feed, SessionSettings(1)) for k, p in paths.items()}
    load_after = load_avg()
    total_s = time.perf_counter() - t_start

    # --- report ---------------------------------------------------------------------------
    cpu = cpu_info()
    ratio = {n: {shape: v["ORT FP32"]["p50_ms"] / v["ORT INT8"]["p50_ms"] for shape, v in row.items()}
             for n, row in table.items()}  # fmt: skip
    one = ratio[threads[0]]["b1_s64"]
    want_one = 2.5 if cpu["vnni"] else 1.3
    never_slower = all(r >= 1.0 for row in ratio.values() for r in row.values())
    drop = accuracy["ORT FP32"] - accuracy["ORT INT8"]
    size_share = sizes["ORT INT8"] / sizes["ORT FP32"]
    targets = [
        (f"INT8 >= {want_one}x ORT FP32 at {threads[0]} thread, b=1 seq 64 ({'VNNI' if cpu['vnni'] else 'AVX2'} target)",
         f"{one:.2f}x", one >= want_one),
        (f"INT8 never slower than ORT FP32 at threads {threads}, b=1 and b=32", f"min {min(r for row in ratio.values() for r in row.values()):.2f}x",
         never_slower),
        ("accuracy drop <= 1 point", f"{drop * 100:+.2f} points", drop <= 0.01 + 1e-12),
        ("INT8 file <= 30% of FP32", f"{size_share:.1%}", size_share <= 0.30),
        ("quantize step (the search) <= 30 s on the 2-core AVX2 machine", f"{search_s:.1f} s", search_s <= 30 or cpu["vnni"]),
    ]  # fmt: skip
    lines = [
        f"`benchmarks/cpu_inference.py --run-dir {run.relative_to(ROOT) if run.is_relative_to(ROOT) else run}`,"
        f" {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, one process, {total_s:.0f} s in all (the INT8 recipe search,"
        f" as the quantize step runs it: {search_s:.1f} s).",
        "",
        f"- CPU: {cpu['model']}, {cpu['logical_cores']} logical cores; flags: {', '.join(cpu['flags']) or 'none'};"  # type: ignore[arg-type]
        f" **VNNI: {'yes' if cpu['vnni'] else 'no'}**, AMX: {'yes' if cpu['amx'] else 'no'}.",
        f"- onnxruntime {ort.__version__}, Python {platform.python_version()}; ORT_ENABLE_ALL, inter-op 1, sequential.",
        f"- Load: before `{load_before.split('load average:')[-1].strip()}`, after"
        f" `{load_after.split('load average:')[-1].strip()}` (1/5/15-min averages).",
        f"- Model: {name}, test split {len(test.texts)} rows at max_length {max_length}. Latency inputs: real test"
        " text cut to exactly 64 tokens (no padding), tokenization excluded; batch 1:"
        f" {args.iters_b1} calls per model and thread count, batch 32: {args.iters_b32}, taking turns in blocks.",
        f"- INT8 = recipe **{quant.chosen}** ({quant.recipe.get('mode', 'static')}, graph"
        f" {quant.graph_optimization.get('chosen_graph')}: fusions {quant.graph_optimization.get('fusions')}),"
        f" chosen by the search ({qcfg_source} quantize config); package primary model: {quant.primary}.",
        f"- Accuracy: ORT FP32 {accuracy['ORT FP32']:.4f}, INT8 {accuracy['ORT INT8']:.4f}; sizes"
        f" {sizes['ORT FP32'] / 1e6:.1f} MB and {sizes['ORT INT8'] / 1e6:.1f} MB ({size_share:.0%}).",
        "",
        "| threads | b=1 FP32 p50 ms | b=1 INT8 p50 ms | b=1 speed-up | b=32 FP32 p50 ms | b=32 INT8 p50 ms | b=32 speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in threads:
        b1, b32 = table[n]["b1_s64"], table[n]["b32_s64"]
        lines.append(f"| {n} | {b1['ORT FP32']['p50_ms']:.2f} | {b1['ORT INT8']['p50_ms']:.2f} | {ratio[n]['b1_s64']:.2f}x |"
                     f" {b32['ORT FP32']['p50_ms']:.1f} | {b32['ORT INT8']['p50_ms']:.1f} | {ratio[n]['b32_s64']:.2f}x |")  # fmt: skip
    lines += ["", "INT8 recipe search (in the order tried):", "", "| recipe | status | screening acc | accuracy |"
              " drop (points) | p50 ms | FP32 p50 ms | size MB | seconds |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in quant.search:
        f = lambda v, d=4: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        lines.append(f"| {r['name']} | {r['status']} | {f(r.get('screen_accuracy'))} | {f(r.get('accuracy'))} |"
                     f" {f(None if r.get('accuracy_drop') is None else r['accuracy_drop'] * 100, 2)} | {f(r.get('p50_ms'), 2)} |"
                     f" {f(r.get('fp32_p50_ms'), 2)} | {f(None if r.get('size_bytes') is None else r['size_bytes'] / 1e6, 1)} |"
                     f" {r.get('seconds', 0):.1f} |")  # fmt: skip
    lines += ["", "Targets:", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in targets]
    fp, i8 = profiles["ORT FP32"], profiles["ORT INT8"]
    lines += ["", "Where the time goes at 1 thread, b=1 seq 64 (ORT's profiler, kernel ms per call by op type):", "",
              "| model | kernel total ms | GEMM ms | everything else ms | largest ops (ms) |", "|---|---|---|---|---|"]  # fmt: skip
    for label, prof in (("ORT FP32", fp), ("ORT INT8", i8)):
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(prof["top_ops_ms"].items())[:6])
        lines.append(f"| {label} | {prof['total_ms']:.2f} | {prof['gemm_ms']:.2f} | {prof['other_ms']:.2f} | {top} |")
    body = "\n".join(lines)
    print(body)
    results = {"run_dir": str(run), "package": str(package) if package else None, "cpu": cpu, "threads": threads,
               "load_before": load_before, "load_after": load_after, "accuracy": accuracy, "size_bytes": sizes,
               "latency": {str(k): v for k, v in table.items()}, "search": quant.search, "chosen": quant.chosen,
               "primary": quant.primary, "search_seconds": search_s, "serving": quant.serving,
               "targets": [{"target": t, "measured": v, "met": ok} for t, v, ok in targets],
               "op_profile_1t_b1_s64": profiles, "seconds": total_s}  # fmt: skip
    if not args.no_write:
        cpu_name = str(cpu["model"]).split("@")[0].strip()
        replace_section(f"CPU inference ({name}, {cpu_name})", body)
        out = ROOT / "benchmarks" / f"cpu_inference_{cpu_tag(cpu)}.json"
        out.write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
