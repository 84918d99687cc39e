"""INT8 against ONNX Runtime FP32 for every supported model family, at a realistic shape.

    .venv/bin/python benchmarks/families.py [--families bert roberta ...] [--threads 1 2] [--out DIR]

Per family: a random-weight sequence classifier of 6 layers, hidden 384, 12 heads, feed-forward
1,536 (tests/families.py builds it, with a tokenizer of the family's kind and 8,000 tokens trained
on Rotten Tomatoes snippets) goes through the package path of a run: the ONNX export
(trainflow/convert/export.py), then the INT8 step as the quantize stage runs it with the shipped
default recipes (trainflow/convert/quantize.py: the family's graph preparation, one recipe,
`--recipe`, by default the first default one, the accuracy gate opened wide because random
weights have no accuracy to keep). Then both
models are timed side by side (taking turns per batch) at batch 1 and 32 of texts of exactly 64
tokens, at each thread count; the fused operators and the file sizes are read from the result.
Prints a Markdown table (the section "INT8 by model family" of benchmarks/RESULTS.md) and writes
families.json to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.families import FAMILIES, SHAPES, build_family  # noqa: E402
from tests.tiny import rt_texts  # noqa: E402
from trainflow.convert.export import export_onnx  # noqa: E402
from trainflow.convert.onnx_model import FolderTokenizer, cpu_info, thread_sweep  # noqa: E402
from trainflow.convert.quantize import quantize_and_gate  # noqa: E402
from trainflow.core.config import ExportConfig, QuantizeConfig, default_recipes  # noqa: E402
from trainflow.core.layout import HEAD  # noqa: E402
from trainflow.data.dataset import SplitData  # noqa: E402

SEQ = 64
LABELS = ["neg", "pos"]


def long_texts(tokenizer: FolderTokenizer, n: int, corpus: list[str]) -> list[str]:
    """`n` texts of at least SEQ tokens (consecutive snippets joined), so every input is exactly SEQ
    tokens after truncation."""
    out, current = [], ""
    for text in corpus:
        current = f"{current} {text}".strip()
        if tokenizer([current], truncation=False)["input_ids"].shape[1] >= SEQ:
            out.append(current)
            current = ""
            if len(out) == n:
                break
    return out


def _as_training_saves_it(folder: Path) -> None:
    """A decoder's tokenizer and config get their padding token, as trainflow's training saves them."""
    from transformers import AutoConfig, AutoTokenizer

    from trainflow.training.preflight import ensure_pad_token

    tokenizer, config = AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder)
    ensure_pad_token(tokenizer, config)
    tokenizer.save_pretrained(folder)
    config.save_pretrained(folder)


def one_family(name: str, work: Path, corpus: list[str], threads: list[int], recipe: str) -> dict:
    t0 = time.perf_counter()
    base = build_family(name, work / "base", corpus, shape="bench")
    _as_training_saves_it(base)
    (base / HEAD).write_text(json.dumps({"task": "classification", "labels": LABELS, "cutpoints": None}))
    exported = export_onnx(model_dir=base, out_dir=work / "onnx", export=ExportConfig(), max_length=SEQ)
    tokenizer = FolderTokenizer(work / "onnx")
    texts = long_texts(tokenizer, 132, corpus)
    split = SplitData([str(i) for i in range(len(texts))], texts, [i % 2 for i in range(len(texts))])
    recipes = [r for r in default_recipes() if r.name == recipe]
    q = QuantizeConfig(max_accuracy_drop=1.0, search=False, latency_samples=8, latency_rounds=1, threads=[1],
                       screen_samples=8, recipes=recipes, max_batch_diff=None)  # fmt: skip
    result = quantize_and_gate(fp32_path=Path(exported.onnx_path), tokenizer=tokenizer, task="classification",
                               n_classes=2, cutpoints=None, calibration=SplitData(split.ids[:16], texts[:16],
                               split.labels[:16]), test=SplitData(split.ids[:32], texts[:32], split.labels[:32]),
                               max_length=SEQ, q=q)  # fmt: skip
    rows = thread_sweep({"fp32": Path(exported.onnx_path), "int8": Path(result.int8_path)}, tokenizer, SEQ,
                        texts[32:], threads=threads, batch_sizes=(1, 32), rounds=1)  # fmt: skip
    p50 = {(r["model"], r["threads"], r["batch"]): float(r["p50_ms"]) for r in rows}  # type: ignore[arg-type]
    speedups = {f"b{b}_t{t}": p50[("fp32", t, b)] / p50[("int8", t, b)] for t in threads for b in (1, 32)}
    graph = result.graph_optimization
    return {
        "family": name,
        "model_type": FAMILIES[name].model_type,
        "decoder": FAMILIES[name].decoder,
        "inputs": exported.inputs,
        "graph": graph.get("chosen_graph"),
        "applied": graph.get("applied"),
        "fusions": graph.get("fusions", {}),
        "recipe": result.chosen,
        "fp32_mb": result.fp32_size_bytes / 1e6,
        "int8_mb": result.int8_size_bytes / 1e6,
        "size_ratio": result.int8_size_bytes / result.fp32_size_bytes,
        "p50_ms": {f"{m}_b{b}_t{t}": v for (m, t, b), v in p50.items()},
        "speedup": speedups,
        "seconds": time.perf_counter() - t0,
    }


def table(results: list[dict], threads: list[int]) -> str:
    head = ["family", "inputs", "graph (fused ops)", "INT8 file / FP32"]
    head += [f"b{b} t{t} INT8 vs FP32 (ms)" for b in (1, 32) for t in threads]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['family']} | failed: {r['error']} |")
            continue
        fused = ", ".join(f"{k} {v}" for k, v in sorted(r["fusions"].items())) or "none"
        cells = [r["family"], ", ".join(i.replace("_ids", "").replace("attention_mask", "mask") for i in r["inputs"]),
                 f"{r['applied']}: {fused}", f"{r['int8_mb']:.1f} / {r['fp32_mb']:.1f} MB ({r['size_ratio']:.0%})"]  # fmt: skip
        for b in (1, 32):
            for t in threads:
                ms = r["p50_ms"]
                cells.append(f"**{r['speedup'][f'b{b}_t{t}']:.2f}x** ({ms[f'int8_b{b}_t{t}']:.1f} vs"
                             f" {ms[f'fp32_b{b}_t{t}']:.1f})")  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "families_out")
    parser.add_argument("--recipe", default=default_recipes()[0].name, help="A default recipe's name (the first).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = rt_texts(4000)
    results = []
    for name in args.families:
        print(f"{name} ...", flush=True)
        try:
            results.append(one_family(name, args.out / name, corpus, args.threads, args.recipe))
        except Exception as err:  # noqa: BLE001 - one family's failure is a row of the table
            results.append({"family": name, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
        print(json.dumps(results[-1], default=str)[:400], flush=True)
    hidden, layers, heads, ff, vocab = SHAPES["bench"]
    env = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_info(), "python": platform.python_version(),
           "shape": {"hidden": hidden, "layers": layers, "heads": heads, "ff": ff, "vocab": vocab, "seq": SEQ}}  # fmt: skip
    (args.out / "families.json").write_text(json.dumps({"env": env, "results": results}, indent=1, default=str))
    print(f"\n## INT8 by model family: {args.recipe} ({env['cpu'].get('model', '?')})\n")
    print(f"{env['date']}; random weights, {layers} layers, hidden {hidden}, {heads} heads, feed-forward {ff},"
          f" vocabulary {vocab}, {SEQ} tokens; p50 of ONNX Runtime at batch b and t threads, INT8 (the package's"
          " recipe and graph) against FP32, taking turns.\n")  # fmt: skip
    print(table(results, args.threads))


if __name__ == "__main__":
    main()
