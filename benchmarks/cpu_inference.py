"""CPU inference benchmark of a trained run: PyTorch eager FP32, ORT FP32, ORT INT8 dynamic and
ORT INT8 static (the recipe the quantize step's search picks), measured in one process.

    .venv/bin/python benchmarks/cpu_inference.py [--run-dir runs/rt-sentiment/<run id>] [--threads 2]

Steps: re-run the INT8 recipe search of `trainflow/quantize.py` on a copy of the run's FP32 ONNX
model (same calibration subset and test split, the run's resolved quantize config if the package
is found, else the defaults); build a dynamic INT8 model (benchmark only: the pipeline ships
static QDQ); find the PyTorch trial model that the ONNX graph was exported from (the one whose
logits match); then time every engine at batch 1 x seq 16/64/128 and batch 32 x seq 64, engines
taking turns in blocks so that load from other processes hits them alike. Writes the section
"CPU inference (<model name>, <n> threads)" of benchmarks/RESULTS.md and
benchmarks/cpu_inference_<n>t.json.
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

from trainflow.config import QuantizeConfig  # noqa: E402
from trainflow.data import SplitData  # noqa: E402
from trainflow.modeling import load_model  # noqa: E402
from trainflow.onnx_model import OnnxTextModel, SessionSettings  # noqa: E402
from trainflow.quantize import evaluate_onnx, quantize_and_gate  # noqa: E402

SHAPES = [(1, 16), (1, 64), (1, 128), (32, 64)]
TARGET_SHAPE = (1, 64)
ENGINES = ["PyTorch eager FP32", "ORT FP32", "ORT INT8 dynamic", "ORT INT8 static"]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def newest_run() -> Path:
    runs = sorted((ROOT / "runs").glob("*/*/onnx/model.onnx"), key=lambda p: p.stat().st_mtime)
    if not runs:
        sys.exit("no run with onnx/model.onnx under runs/: run `make run` first or pass --run-dir")
    return runs[-1].parent.parent


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


def find_torch_model(run: Path, onnx_model: OnnxTextModel, texts: list[str]) -> Path:
    """The trial model the ONNX graph was exported from: the one whose logits match it."""
    import torch

    ref = onnx_model.logits(texts)
    for best in sorted(run.glob("trials/trial-*/best")):
        model, tok = load_model(best)
        enc = tok(texts, truncation=True, max_length=onnx_model.max_length, padding=True, return_tensors="pt")  # type: ignore[operator]
        with torch.inference_mode():
            out = model.hf(**enc).logits.numpy()  # type: ignore[operator]
        if np.abs(out - ref).max() < 1e-3:
            return best
    sys.exit(f"no trials/*/best in {run} reproduces onnx/model.onnx")


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


def main() -> None:  # noqa: C901 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="runs/<name>/<run id>; default: the newest")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op and torch threads")
    parser.add_argument("--iters-b1", type=int, default=500)
    parser.add_argument("--iters-b32", type=int, default=40)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
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
    shutil.copytree(run / "onnx", onnx_dir, ignore=shutil.ignore_patterns("model_int8.onnx", "int8-search"))
    tok = AutoTokenizer.from_pretrained(onnx_dir)
    settings = SessionSettings(intra_op_num_threads=args.threads)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    # 1. The pipeline's INT8: the recipe search, exactly as the quantize step runs it.
    qcfg = qcfg.model_copy(update={"intra_op_threads": args.threads})
    t0 = time.perf_counter()
    quant = quantize_and_gate(fp32_path=onnx_dir / "model.onnx", tokenizer=tok, task=task, n_classes=n_classes,
                              cutpoints=None, calibration=calibration, test=test, max_length=max_length, q=qcfg)  # fmt: skip
    search_s = time.perf_counter() - t0
    # 2. Dynamic INT8 (weights int8, activations quantized per call), for comparison only.
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(onnx_dir / "model.onnx"), str(work / "prep.onnx"), auto_merge=True)
    quantize_dynamic(str(work / "prep.onnx"), str(work / "dynamic.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, op_types_to_quantize=["MatMul"])  # fmt: skip
    paths = {
        "ORT FP32": onnx_dir / "model.onnx",
        "ORT INT8 dynamic": work / "dynamic.onnx",
        "ORT INT8 static": Path(quant.int8_path),
    }
    models = {k: OnnxTextModel(p, tok, max_length, settings=settings) for k, p in paths.items()}
    torch_dir = find_torch_model(run, models["ORT FP32"], test.texts[:16])
    torch_model, _ = load_model(torch_dir)

    # Accuracy on the test split (dynamic padding, batch 32), every engine.
    accuracy = {k: evaluate_onnx(m, task, test, n_classes, None)["accuracy"] for k, m in models.items()}
    correct = 0
    for start in range(0, len(test.texts), 32):
        enc = tok(test.texts[start : start + 32], truncation=True, max_length=max_length, padding=True,
                  return_tensors="pt")  # type: ignore[operator]  # fmt: skip
        with torch.inference_mode():
            pred = torch_model.hf(**enc).logits.argmax(1).numpy()  # type: ignore[operator]
        correct += int((pred == np.asarray(test.labels[start : start + 32])).sum())
    accuracy["PyTorch eager FP32"] = correct / len(test.texts)
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    sizes["PyTorch eager FP32"] = (torch_dir / "model.safetensors").stat().st_size

    def torch_runner(feed: dict[str, np.ndarray]) -> object:
        with torch.inference_mode():
            return torch_model.hf(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits  # type: ignore[operator]

    def ort_runner(m: OnnxTextModel) -> Callable[[dict[str, np.ndarray]], object]:
        return lambda feed: m.session.run(["logits"], feed)  # type: ignore[attr-defined]

    runners = {"PyTorch eager FP32": torch_runner, **{k: ort_runner(m) for k, m in models.items()}}
    latency: dict[str, dict[str, dict[str, float]]] = {e: {} for e in ENGINES}
    for batch, seq in SHAPES:
        feeds = fixed_length_inputs(tok, test.texts, batch, seq, pool=16 if batch == 1 else 4)
        iters = args.iters_b1 if batch == 1 else args.iters_b32
        times = measure(runners, feeds, iters=iters, warmup=max(10, iters // 20), block=10 if batch == 1 else 2)
        for engine, ms in times.items():
            latency[engine][f"b{batch}_s{seq}"] = summarize(ms, batch)
    target_feed = fixed_length_inputs(tok, test.texts, *TARGET_SHAPE, pool=1)[0]
    profiles = {k: op_profile(paths[k], target_feed, settings) for k in ("ORT FP32", "ORT INT8 static")}
    load_after = load_avg()
    total_s = time.perf_counter() - t_start

    # --- report ---------------------------------------------------------------------------
    cpu = cpu_info()
    ref = "ORT FP32"
    fp32_acc = accuracy[ref]
    key = f"b{TARGET_SHAPE[0]}_s{TARGET_SHAPE[1]}"
    static = latency["ORT INT8 static"][key]
    speedup_fp32 = latency[ref][key]["p50_ms"] / static["p50_ms"]
    speedup_torch = latency["PyTorch eager FP32"][key]["p50_ms"] / static["p50_ms"]
    drop = fp32_acc - accuracy["ORT INT8 static"]
    targets = [
        ("INT8 static p95 <= 5 ms at b=1, seq 64", f"{static['p95_ms']:.2f} ms", static["p95_ms"] <= 5.0),
        ("INT8 static >= 2.5x faster than ORT FP32 (p50, b=1, seq 64)", f"{speedup_fp32:.2f}x", speedup_fp32 >= 2.5),
        ("INT8 static >= 4x faster than PyTorch eager (p50, b=1, seq 64)", f"{speedup_torch:.2f}x",
         speedup_torch >= 4.0),
        ("INT8 static accuracy drop <= 1 point vs ORT FP32", f"{drop * 100:+.2f} points", drop <= 0.01 + 1e-12),
    ]  # fmt: skip

    lines = [
        f"`benchmarks/cpu_inference.py --run-dir {run.relative_to(ROOT) if run.is_relative_to(ROOT) else run}"
        f" --threads {args.threads}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, one process, {total_s:.0f} s in all"
        f" (INT8 recipe search {search_s:.0f} s).",
        "",
        f"- CPU: {cpu['model']}, {cpu['logical_cores']} logical cores; flags of interest: "
        f"{', '.join(cpu['flags']) or 'none'}; **AVX-512 VNNI / AVX-VNNI: {'yes' if cpu['vnni'] else 'no'}**, "  # type: ignore[arg-type]
        f"AMX: {'yes' if cpu['amx'] else 'no'}.",
        f"- Threads: ORT intra-op {args.threads}, inter-op 1, sequential, ORT_ENABLE_ALL; torch "
        f"{torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op threads, inference_mode.",
        f"- onnxruntime {ort.__version__}, torch {torch.__version__}, Python {platform.python_version()}.",
        f"- Load: before `{load_before.split('load average:')[-1].strip()}`, after "
        f"`{load_after.split('load average:')[-1].strip()}` (1/5/15-min load averages; this machine is shared "
        "with other engineers' jobs, so a load above ~0 means they competed for the 2 cores).",
        f"- Model: {name}, test split {len(test.texts)} rows, accuracy at max_length {max_length}; latency "
        "inputs are real test text cut to exactly the sequence length (no padding), tokenization excluded; "
        f"batch 1: {args.iters_b1} calls per engine and shape, batch 32: {args.iters_b32}, engines taking turns "
        "in blocks.",
        f"- PyTorch model: `{torch_dir.relative_to(ROOT) if torch_dir.is_relative_to(ROOT) else torch_dir}` "
        "(the trial whose logits match the ONNX export).",
        f"- INT8 static = recipe **{quant.chosen}** chosen by the search (graph optimization "
        f"{quant.graph_optimization['applied']}, {qcfg_source} quantize config); INT8 dynamic = `quantize_dynamic` QInt8 per-channel MatMul weights,"
        " benchmark only.",
        "",
        "| engine | shape | p50 ms | p95 ms | p99 ms | throughput /s | p50 speed-up vs ORT FP32 | size MB | "
        "test accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for batch, seq in SHAPES:
        k = f"b{batch}_s{seq}"
        for engine in ENGINES:
            m = latency[engine][k]
            ratio = latency[ref][k]["p50_ms"] / m["p50_ms"]
            lines.append(
                f"| {engine} | b={batch}, seq {seq} | {m['p50_ms']:.2f} | {m['p95_ms']:.2f} | {m['p99_ms']:.2f} | "
                f"{m['throughput_per_s']:.0f} | {ratio:.2f}x | {sizes[engine] / 1e6:.1f} | {accuracy[engine]:.4f} |"
            )
    lines += [
        "",
        f"INT8 recipe search on this model (gate: drop <= {qcfg.max_accuracy_drop * 100:.1f} points; batch-1 latency "
        f"of the search itself, {qcfg.latency_samples} test texts x {qcfg.latency_rounds} rounds, natural lengths; "
        f"FP32 p50 {quant.fp32_latency['p50_ms']:.2f} ms):",
        "",
        "| recipe | accuracy | drop (points) | p50 ms | p95 ms | size MB | INT8 weight nodes | FP32 weight nodes | "
        "passed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in quant.search:
        if row.get("error"):
            lines.append(f"| {row['name']} | error: {row['error']} | | | | | | | no |")
            continue
        mark = " **(chosen)**" if row["name"] == quant.chosen else ""
        lines.append(
            f"| {row['name']}{mark} | {row['accuracy']:.4f} | {row['accuracy_drop'] * 100:+.2f} | "
            f"{row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['size_bytes'] / 1e6:.1f} | {row['quantized_nodes']} | "
            f"{len(row['fp32_weight_nodes'])} | {'yes' if row['passed'] else 'no'} |"
        )
    lines += ["", "Targets (b=1, seq 64):", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in targets]
    fp, i8 = profiles["ORT FP32"], profiles["ORT INT8 static"]
    need = fp["total_ms"] / 2.5 - i8["other_ms"]
    lines += [
        "",
        "Where the time goes at b=1, seq 64 (ORT's profiler, kernel time per call summed by op type, "
        f"{fp['calls']} calls each; MatMul-family ops counted as GEMM, which includes the attention's FP32 "
        "activation x activation MatMuls):",
        "",
        "| model | kernel total ms | GEMM ms | everything else ms | largest ops (ms) |",
        "|---|---|---|---|---|",
    ]
    for label, prof in (("ORT FP32", fp), ("ORT INT8 static", i8)):
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(prof["top_ops_ms"].items())[:6])
        lines.append(f"| {label} | {prof['total_ms']:.2f} | {prof['gemm_ms']:.2f} | {prof['other_ms']:.2f} | {top} |")
    lines += [
        "",
        f"INT8 GEMMs run {fp['gemm_ms'] / i8['gemm_ms']:.2f}x faster than FP32 GEMMs here; the rest of the INT8 graph "
        f"(LayerNorm, GELU, Softmax, residual Adds, reshapes, activation QuantizeLinear) takes {i8['other_ms']:.2f} ms "
        f"on its own. A 2.5x speed-up means {fp['total_ms'] / 2.5:.2f} ms per call, which would leave "
        + (
            f"{need:.2f} ms for the GEMMs: {i8['gemm_ms'] / need:.1f}x faster INT8 GEMMs than measured."
            if need > 0
            else "nothing for the GEMMs: out of reach however fast the INT8 kernels are."
        ),
    ]
    body = "\n".join(lines)
    print(body)
    results = {
        "run_dir": str(run),
        "package": str(package) if package else None,
        "cpu": cpu,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": load_after,
        "accuracy": accuracy,
        "size_bytes": sizes,
        "latency": latency,
        "search": quant.search,
        "chosen": quant.chosen,
        "graph_optimization": quant.graph_optimization,
        "session_options": quant.session_options,
        "targets": [{"target": t, "measured": v, "met": ok} for t, v, ok in targets],
        "op_profile_b1_s64": profiles,
        "seconds": total_s,
    }
    if not args.no_write:
        replace_section(f"CPU inference ({name}, {args.threads} thread{'s' if args.threads > 1 else ''})", body)
        out = ROOT / "benchmarks" / f"cpu_inference_{args.threads}t.json"
        out.write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
