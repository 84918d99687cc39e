"""What a trial's model will cost where it is deployed: the INT8 model's p50 latency on this CPU and
its file size, for `hpo.constraints`.

Both depend on the architecture (the base model and `model.max_length`, and the task's output
size), not on what a trial learns, so they are measured once per architecture on an untrained
model of that shape: built from the base, exported to ONNX and quantized with the first INT8
recipe exactly as the quantize step would (its gate opened wide: an untrained model has no
accuracy to keep), then timed at `hpo.constraints.threads` threads and batch
`hpo.constraints.batch`. The figures are cached in `<run_root>/.deploy-cost/<key>.json`, the key
naming the base model's checksum, the shape, the recipe, the threads, the batch, the CPU and the
ONNX Runtime version, so trials that differ only in learning rate, and later runs, pay nothing.
Workers measuring the same architecture at once wait for each other (a file lock).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
from filelock import FileLock

from trainflow.convert.export import export_onnx
from trainflow.convert.onnx_model import FolderTokenizer, Inputs, cpu_info, thread_sweep
from trainflow.convert.quantize import quantize_and_gate
from trainflow.core.config import RunConfig
from trainflow.core.io import atomic_write_json
from trainflow.data.dataset import SplitData
from trainflow.tasks.task import TaskHead, n_outputs
from trainflow.training.base_model import checksum_model_dir, resolve_base_model

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=32)
def _checksum(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    return checksum_model_dir(folder)


def _base_checksum(folder: Path) -> str:
    """The base model folder's checksum, hashed once per process while its files are unchanged
    (every trial asks; a large base takes seconds to hash)."""
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file())
    return _checksum(str(folder), stamp)


def architecture_key(cfg: RunConfig) -> str:
    """What the deployed cost depends on, hashed (see the module docstring)."""
    folder = resolve_base_model(cfg.model.base)
    base = _base_checksum(Path(folder)) if Path(folder).is_dir() else cfg.model.base
    limits = cfg.hpo.constraints
    parts = {
        "base": base,
        "max_length": cfg.model.max_length,
        "outputs": n_outputs(cfg.task.type, cfg.task.labels),
        "recipe": cfg.quantize.recipes[0].model_dump(mode="json"),
        "threads": limits.threads if limits else 1,
        "batch": limits.batch if limits else 1,
        "cpu": cpu_info().get("model"),
        "onnxruntime": importlib_metadata.version("onnxruntime"),
        "machine": platform.machine(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def measure_deploy_cost(cfg: RunConfig, *, texts: Inputs, cache_dir: Path) -> dict[str, float]:
    """{"latency_ms", "size_mb"} of the INT8 model of `cfg`'s architecture (cached)."""
    key = architecture_key(cfg)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.json"
    with FileLock(str(cache_dir / f"{key}.lock")):
        if path.is_file():
            cached = json.loads(path.read_text())
            return {"latency_ms": float(cached["latency_ms"]), "size_mb": float(cached["size_mb"])}
        t0 = time.perf_counter()
        cost = _measure(cfg, texts)
        atomic_write_json(path, {**cost, "base": cfg.model.base, "max_length": cfg.model.max_length,
                                 "measured_in_s": time.perf_counter() - t0})  # fmt: skip
    log.info("deployed cost of %s at max_length %d: INT8 %.2f ms, %.1f MB (measured in %.0f s, cached in %s)",
             cfg.model.base, cfg.model.max_length, cost["latency_ms"], cost["size_mb"], time.perf_counter() - t0,
             path)  # fmt: skip
    return cost


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _any_output_head(cfg: RunConfig) -> TaskHead:
    """The untrained model is timed, not judged: its outputs are read as classes, whatever the task."""
    return TaskHead("classification", tuple(str(i) for i in range(n_outputs(cfg.task.type, cfg.task.labels))))


def _measure(cfg: RunConfig, texts: Inputs) -> dict[str, float]:
    from trainflow.training.modeling import build_model, save_model

    limits = cfg.hpo.constraints
    threads, batch = (limits.threads, limits.batch) if limits else (1, 1)
    with tempfile.TemporaryDirectory(prefix="deploy-cost-") as tmp:
        work = Path(tmp)
        model = build_model(task=cfg.task.type, labels=cfg.task.labels, base=cfg.model.base, head=cfg.model.head)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(cfg.model.base))
        save_model(model, tokenizer, work / "model")
        exported = export_onnx(model_dir=work / "model", out_dir=work / "onnx", export=cfg.export,
                               max_length=cfg.model.max_length)  # fmt: skip
        tok = FolderTokenizer(work / "onnx")
        sample = (texts * (1 + 64 // max(1, len(texts))))[:64]
        labels = [0] * len(sample)
        q = cfg.quantize.model_copy(update={
            "max_accuracy_drop": 1.0, "search": False, "max_batch_diff": None, "threads": [threads],
            "latency_samples": 8, "latency_rounds": 1, "screen_samples": 8, "recipes": [cfg.quantize.recipes[0]],
        })  # fmt: skip
        firsts = [t if isinstance(t, str) else t[0] for t in sample]  # a pair task's calibration pairs stay pairs
        pairs = None if all(isinstance(t, str) for t in sample) else [t[1] for t in sample if not isinstance(t, str)]
        split = SplitData([str(i) for i in range(len(sample))], firsts, labels, pairs)
        with _quiet(
            "trainflow.convert.quantize", "trainflow.convert.export", "root"
        ):  # its gate and speed-up talk of a package
            result = quantize_and_gate(fp32_path=Path(exported.onnx_path), tokenizer=tok, task=cfg.task.type,
                                       n_classes=len(cfg.task.labels), cutpoints=model.cutpoint_values(),
                                       head=_any_output_head(cfg),
                                       calibration=split, test=split, max_length=cfg.model.max_length, q=q)  # fmt: skip
        rows = thread_sweep({"int8": Path(result.int8_path)}, tok, cfg.model.max_length, sample, threads=[threads],
                            batch_sizes=(batch,), rounds=2)  # fmt: skip
        latency = float(np.median([float(r["p50_ms"]) for r in rows]))  # type: ignore[arg-type]
        size = Path(result.int8_path).stat().st_size / 1e6
    return {"latency_ms": latency, "size_mb": size}
